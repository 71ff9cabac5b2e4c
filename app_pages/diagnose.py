"""Diagnose: a photo in (upload, camera, a HAM10000 image or one click on an example), the models' answer out."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import streamlit as st

import app_components as ui
from derm import catalog, data
from derm.classes import CLASSES, FULL_NAMES
from derm.imageio import ImageError, load_image

if TYPE_CHECKING:  # the table is read only when a HAM10000 image is asked for: the first page needs no pandas
    import pandas as pd

UPLOAD_TYPES = ["jpg", "jpeg", "png", "bmp", "tif", "tiff", "webp"]
UPLOAD, CAMERA, HAM = "Upload a photo", "Camera", "HAM10000 image"
ANY_CLASS = "any class"


def pick_random(table: pd.DataFrame) -> None:
    """Button callback: runs before the id box is drawn, so it may set its value."""
    label = st.session_state.get("ham_class", ANY_CLASS)
    st.session_state["ham_id"] = catalog.random_image_id(table, None if label == ANY_CLASS else label)


def pick_example(image_id: str) -> None:
    """Button callback (an example, or a similar case): the image goes through the HAM10000 source, so
    its ground truth is shown."""
    st.session_state["source"] = HAM
    st.session_state["ham_id"] = image_id


def take_pick_from_elsewhere() -> None:
    """A similar case clicked on another page (the explorer) arrives here as ui.PICK_KEY: it becomes
    the HAM10000 image to analyse before the source widgets are drawn."""
    image_id = st.session_state.pop(ui.PICK_KEY, None)
    if image_id:
        pick_example(image_id)


def show_examples(images: data.ImageSource) -> None:
    """One test image per class, labelled with its true diagnosis: one click to a first result."""
    shown = catalog.examples(images.path)
    if not shown:
        return
    st.markdown("**Try an example**: one test-split image per diagnosis (the models never saw these).")
    for column, example in zip(st.columns(len(shown)), shown):
        column.image(str(example.path), width="stretch")
        column.button("Analyse", key=f"example_{example.image_id}", on_click=pick_example, args=(example.image_id,),
                      width="stretch", help=f"{example.image_id}, true diagnosis {example.label}")
        column.caption(f"**{example.label}**: {FULL_NAMES[example.label]}")  # under the buttons: they stay in line


def describe_ham_source(source: data.ImageSource | None) -> None:
    """Say which HAM10000 images are offered and whether the models have seen them."""
    if source is None:
        st.caption("HAM10000 is not available here, so only uploads and the camera are offered.")
    elif source.complete:
        st.caption("Any of the full dataset's images: only the test split's are unseen by the models; the others "
                   "were used in training and model selection.")
    else:
        st.caption("The HAM10000 test split shipped with derm (the full dataset is not here): the models never saw "
                   "these images.")


def describe_split(image_id: str) -> None:
    """Whether the active models trained on this image, from their weights' own split.csv."""
    split = catalog.split_of(image_id, ui.active_weights_dir() / "split.csv")
    if split == "test":
        st.caption(f"{image_id} is in the test split: the models never saw it.")
    elif split:
        st.caption(f"{image_id} is in the {split} split: the models saw it while being trained or chosen, so "
                   "this result is more optimistic than for a new photo.")


def ham_input(table: pd.DataFrame) -> tuple[bytes | None, str, pd.Series | None]:
    """An image id typed, or drawn at random (optionally of one class)."""
    left, middle, right = st.columns([2, 3, 1], vertical_alignment="bottom")
    left.selectbox("Class", [ANY_CLASS, *CLASSES], key="ham_class",
                   format_func=lambda c: c if c == ANY_CLASS else f"{c}: {FULL_NAMES[c]}")
    middle.text_input("Image id", key="ham_id", placeholder=catalog.EXAMPLE_ID)
    right.button("Random", on_click=pick_random, args=(table,), icon=":material/casino:")
    text = st.session_state.get("ham_id", "").strip()
    if not text:
        return None, "", None
    row = catalog.find_image(table, text)
    if row is None:
        st.error(f"{text!r} is not a HAM10000 image id (they look like {catalog.EXAMPLE_ID}).")
        return None, "", None
    describe_split(row["image_id"])
    path = catalog.image_path(row)
    return path.read_bytes(), path.name, row


def chosen_input(images: data.ImageSource | None) -> tuple[bytes | None, str, pd.Series | None]:
    """(file bytes, file name, HAM10000 row or None) from whichever source the user chose."""
    sources = [UPLOAD, CAMERA] + ([HAM] if images is not None else [])
    source = st.radio("Image source", sources, horizontal=True, key="source", label_visibility="collapsed")
    if images is None or source == HAM:
        describe_ham_source(images)
    if source == UPLOAD:
        upload = st.file_uploader("Lesion photo (JPEG, PNG, BMP, TIFF or WebP)", type=UPLOAD_TYPES, key="upload",
                                  max_upload_size=50)
        return (upload.getvalue(), upload.name, None) if upload else (None, "", None)
    if source == CAMERA:
        photo = st.camera_input("Take a close-up photo of the lesion", key="camera")
        return (photo.getvalue(), "camera.jpg", None) if photo else (None, "", None)
    table = ui.ham_table_or_none()
    return ham_input(table) if table is not None else (None, "", None)


def decoded(raw: bytes, name: str) -> np.ndarray | None:
    """The image as RGB, or None after telling the user in one sentence why it cannot be used."""
    try:
        return load_image(raw, name=name)
    except ImageError as exc:
        st.error(str(exc))
        return None


def main() -> None:
    st.title("Diagnose a lesion photo")
    take_pick_from_elsewhere()
    st.markdown(ui.DISCLAIMER)
    images = ui.image_source_or_none()
    if images is not None:
        show_examples(images)
    raw, name, truth = chosen_input(images)
    if raw is None:
        st.info("Choose a dermatoscopic photo of one skin lesion to see what the models think.")
        return
    rgb = decoded(raw, name)
    if rgb is None:
        return
    predictor = ui.predictor_or_none()
    if predictor is not None:
        ui.show_analysis(predictor, rgb, name, truth, on_pick=pick_example if images is not None else None)


main()
