"""Diagnose: a photo in (upload, camera or a HAM10000 image), the models' answer out."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

import app_components as ui
from derm import catalog
from derm.classes import CLASSES, FULL_NAMES
from derm.imageio import ImageError, load_image

UPLOAD_TYPES = ["jpg", "jpeg", "png", "bmp", "tif", "tiff", "webp"]
UPLOAD, CAMERA, HAM = "Upload a photo", "Camera", "HAM10000 image"
ANY_CLASS = "any class"


def pick_random(table: pd.DataFrame) -> None:
    """Button callback: runs before the id box is drawn, so it may set its value."""
    label = st.session_state.get("ham_class", ANY_CLASS)
    st.session_state["ham_id"] = catalog.random_image_id(table, None if label == ANY_CLASS else label)


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
    path = catalog.image_path(row)
    return path.read_bytes(), path.name, row


def chosen_input(table: pd.DataFrame | None) -> tuple[bytes | None, str, pd.Series | None]:
    """(file bytes, file name, HAM10000 row or None) from whichever source the user chose."""
    sources = [UPLOAD, CAMERA] + ([HAM] if table is not None else [])
    source = st.radio("Image source", sources, horizontal=True, key="source", label_visibility="collapsed")
    if table is None:
        st.caption("HAM10000 is not available here, so only uploads and the camera are offered.")
    if source == UPLOAD:
        upload = st.file_uploader("Lesion photo (JPEG, PNG, BMP, TIFF or WebP)", type=UPLOAD_TYPES, key="upload",
                                  max_upload_size=50)
        return (upload.getvalue(), upload.name, None) if upload else (None, "", None)
    if source == CAMERA:
        photo = st.camera_input("Take a close-up photo of the lesion", key="camera")
        return (photo.getvalue(), "camera.jpg", None) if photo else (None, "", None)
    return ham_input(table)


def decoded(raw: bytes, name: str) -> np.ndarray | None:
    """The image as RGB, or None after telling the user in one sentence why it cannot be used."""
    try:
        return load_image(raw, name=name)
    except ImageError as exc:
        st.error(str(exc))
        return None


def main() -> None:
    st.title("Diagnose a lesion photo")
    st.markdown(ui.DISCLAIMER)
    table = ui.ham_table_or_none()
    raw, name, truth = chosen_input(table)
    if raw is None:
        st.info("Choose a dermatoscopic photo of one skin lesion to see what the models think.")
        return
    rgb = decoded(raw, name)
    if rgb is None:
        return
    predictor = ui.predictor_or_none()
    if predictor is not None:
        ui.show_analysis(predictor, rgb, name, truth)


main()
