"""Streamlit pieces the pages share: the active weights and their models, the HAM10000 table, the
analysis cache of each browser session, and the drawing of one analysis (probabilities, models, Grad-CAM, mask).

A module, not a page: st.navigation lists the pages explicitly. Only widgets and drawing live
here; every number comes from derm.
"""

from __future__ import annotations

import hashlib
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
import torch

from derm import data, report
from derm.classes import CLASSES, DESCRIPTIONS, FULL_NAMES
from derm.explain import overlay_heatmap, overlay_mask
from derm.pipeline import Predictor, Result
from derm.weights import WeightsNotFoundError, default_weights_dir, read_manifest

T = TypeVar("T")
WEIGHTS_KEY = "active_weights_dir"
SESSION_CACHE_SIZE = 12  # analyses and heat maps kept per browser session: enough to flip between images
# One intra-op thread: on 2 cores shared with a training run, 2 threads made one analysis ~28 s
# (threads waiting on each other while the trainer holds the cores) against ~1 s with one.
APP_TORCH_THREADS = 1
DISCLAIMER = ("**Research demo, not a diagnosis.** These models were trained from scratch on one public "
              "dataset and are often wrong. Do not use them for medical decisions: show any lesion that "
              "worries you to a doctor.")
DX_TYPES = {"histo": "histopathology", "follow_up": "follow-up examination", "consensus": "expert consensus",
            "confocal": "in-vivo confocal microscopy"}
PERCENT = st.column_config.NumberColumn(format="percent")
PROBABILITY_BAR = st.column_config.ProgressColumn(format="%.1f%%", min_value=0, max_value=100)
PROBABILITY = st.column_config.NumberColumn(format="%.1f%%")


# ----------------------------------------------------------------------------- weights and data


def active_weights_dir() -> Path:
    """The weights this browser session uses: $DERM_WEIGHTS / weights/ unless a run was promoted here."""
    return Path(st.session_state.setdefault(WEIGHTS_KEY, str(default_weights_dir())))


def use_weights(path: Path) -> None:
    st.session_state[WEIGHTS_KEY] = str(path)


@st.cache_resource(show_spinner="Loading the models…", max_entries=3)
def load_predictor(weights_dir: str) -> Predictor:
    """One Predictor per weights folder, shared by all browser sessions (its Grad-CAM takes a lock).

    One throw-away analysis and Grad-CAM warm up the CPU kernels here (the first call takes
    seconds), so the user's first photo gets its answer at the usual speed.
    """
    torch.set_num_threads(APP_TORCH_THREADS)
    predictor = Predictor(weights_dir)
    grey = np.full((150, 200, 3), 128, dtype=np.uint8)
    predictor.analyse(grey)
    predictor.gradcam(grey, CLASSES[0])
    return predictor


def manifest_or_none(weights_dir: Path) -> dict | None:
    try:
        return read_manifest(weights_dir)
    except WeightsNotFoundError:
        return None


def predictor_or_none() -> Predictor | None:
    """The active models, or None after a clear message when there are none."""
    try:
        return load_predictor(str(active_weights_dir()))
    except WeightsNotFoundError as exc:
        st.warning(f"No trained models to run: {exc}. The Training page can train and promote some.")
        return None


def image_source_or_none() -> data.ImageSource | None:
    """The full HAM10000 when found, else the test split shipped in the repo; None only without both."""
    try:
        return data.image_source()
    except data.DataNotFoundError:
        return None


@st.cache_data(show_spinner=False)
def _ham_table(data_dir: str) -> pd.DataFrame:
    return data.load_table(data_dir)


def ham_table_or_none() -> pd.DataFrame | None:
    """The metadata table of the images at hand (all of HAM10000, or its test split), else None."""
    source = image_source_or_none()
    return _ham_table(str(source.path)) if source else None


# ----------------------------------------------------------------------------- per browser session cache


def image_key(rgb: np.ndarray) -> str:
    """Identifies an image by its pixels, whatever it came from (upload, camera, HAM10000)."""
    return hashlib.sha1(rgb.tobytes() + str(rgb.shape).encode()).hexdigest()[:16]


def remember(store: str, key: tuple, compute: Callable[[], T]) -> T:
    """compute() once per key in this browser session: moving a slider must not rerun the models."""
    cache = st.session_state.setdefault(store, {})
    if key not in cache:
        cache[key] = compute()
        while len(cache) > SESSION_CACHE_SIZE:
            cache.pop(next(iter(cache)))
    return cache[key]


def analysis(predictor: Predictor, rgb: np.ndarray, key: str) -> Result:
    return remember("analyses", (str(predictor.weights_dir), key), lambda: predictor.analyse(rgb))


def heat_map(predictor: Predictor, rgb: np.ndarray, key: str, class_name: str, model_name: str | None) -> np.ndarray:
    return remember("heat_maps", (str(predictor.weights_dir), key, class_name, model_name),
                    lambda: predictor.gradcam(rgb, class_name, model_name))


# ----------------------------------------------------------------------------- drawing one analysis


def wrapped(text: str, width: int = 32) -> str:
    """Plotly axis labels do not wrap by themselves: long class names would squeeze the bars."""
    return "<br>".join(textwrap.wrap(text, width))


def probability_figure(table: pd.DataFrame) -> go.Figure:
    """Horizontal bars, most likely on top, full class names, descriptions on hover."""
    fig = go.Figure(go.Bar(
        x=table["probability"], y=[wrapped(f"{n} ({c})") for n, c in zip(table["name"], table["class"])],
        orientation="h",
        text=[f"{p:.1%}" for p in table["probability"]], textposition="outside", customdata=table["description"],
        hovertemplate="%{y}<br>%{x:.1%}<br>%{customdata}<extra></extra>", marker_color="#2f6f8f"))
    fig.update_layout(xaxis=dict(range=[0, 1.18], tickformat=".0%"), yaxis=dict(autorange="reversed"),
                      height=340, margin=dict(l=10, r=10, t=10, b=10))
    return fig


def show_headline(result: Result, mark: str = "") -> None:
    lead = "Unreliable guess" if mark else "Most likely"
    st.subheader(f"{lead}: {FULL_NAMES[result.label]} ({result.label}), {result.confidence:.0%}")
    st.caption(DESCRIPTIONS[result.label])


def show_warnings(result: Result) -> None:
    for warning in result.warnings:
        st.warning(warning)


def show_ground_truth(row: pd.Series) -> None:
    how = DX_TYPES.get(row["dx_type"], row["dx_type"])
    st.info(f"HAM10000 ground truth for {row['image_id']}: **{FULL_NAMES[row['label']]} ({row['label']})**, "
            f"diagnosis confirmed by {how}.")


def show_probabilities(result: Result, key: str) -> None:
    st.plotly_chart(probability_figure(report.probability_table(result)), key=f"probs_{key}")


def show_model_table(result: Result) -> None:
    table = report.model_table(result)
    probability_columns = list(table.columns[2:])
    table[probability_columns] *= 100  # the progress column's printf format shows percent, not fractions
    st.dataframe(table, hide_index=True,
                 column_config={c: PROBABILITY_BAR if c == "ensemble" else PROBABILITY for c in probability_columns})
    st.caption("Each class's ensemble score comes from the model in 'supplied by' (the other model's "
               "score is shown for comparison); the seven scores are then renormalised to sum to 100%.")


def show_gradcam(predictor: Predictor, rgb: np.ndarray, result: Result, key: str, prefix: str,
                 model_name: str | None = None, default_class: str | None = None) -> np.ndarray:
    """Grad-CAM overlay with a class picker (the predicted class by default) and an opacity slider."""
    class_name = st.selectbox("Explain class", CLASSES, index=CLASSES.index(default_class or result.label),
                              format_func=lambda c: f"{c}: {FULL_NAMES[c]}", key=f"{prefix}_cam_class_{key}")
    opacity = st.slider("Heat-map opacity", 0.0, 1.0, 0.45, 0.05, key=f"{prefix}_opacity")
    heat = heat_map(predictor, rgb, key, class_name, model_name)
    overlay = overlay_heatmap(rgb, heat, opacity)
    source = model_name or result.source[class_name]
    members = predictor.members.get(source, [source])
    averaged = f" (the mean of {' and '.join(members)})" if len(members) > 1 else ""
    st.image(overlay, caption=f"Grad-CAM of {source}{averaged} for {class_name}: red marks what raised that score",
             width="stretch")
    return overlay


def show_mask(rgb: np.ndarray, result: Result) -> np.ndarray | None:
    if result.mask is None:
        st.info("These weights have no segmenter, so there is no lesion outline.")
        return None
    overlay = overlay_mask(rgb, result.mask)
    st.image(overlay, caption="U-Net lesion outline", width="stretch")
    return overlay


def show_measurements(result: Result) -> None:
    if result.lesion is None:
        return
    st.table(report.measurement_table(result.lesion).set_index("measure"))
    st.caption(report.NO_SCALE_NOTE)


def show_download(result: Result, images: dict[str, np.ndarray], name: str, key: str,
                  weights_dir: Path) -> None:
    """The zip is built only when the button is clicked (deferred download)."""
    meta = {"image": name, "weights": str(weights_dir)}
    st.download_button("Download result (zip: JSON, CSV, overlays)", data=lambda: report.result_zip(result, images, meta),
                       file_name=f"{Path(name).stem}-analysis.zip", mime="application/zip", on_click="ignore",
                       key=f"download_{key}", icon=":material/download:")


def show_refusal(result: Result, key: str) -> bool:
    """The gate's refusal, reason first; True once the user has asked to see the guess anyway."""
    st.error(f"**Not analysed: this does not look like a dermatoscopic image of a skin lesion.** "
             f"{result.domain.reason}", icon=":material/block:")
    st.caption("The models were trained on dermatoscopic close-ups only; on anything else their answer is "
               f"meaningless. (Domain gate: {result.domain.evidence()}.)")
    if not st.toggle("Show the models' guess anyway", key=f"override_{key}"):
        return False
    st.warning(f"**Unreliable.** {UNRELIABLE}")
    return True


UNRELIABLE = ("Every number below comes from models that were not made for this image: treat all of it as "
              "meaningless.")


def show_analysis(predictor: Predictor, rgb: np.ndarray, name: str, truth: pd.Series | None = None) -> Result:
    """Everything about one image: headline, warnings, probabilities, models, Grad-CAM, mask, download.

    An image the domain gate refuses shows only the reason, until the user opts in; then every
    section is marked unreliable.
    """
    key = image_key(rgb)
    result = analysis(predictor, rgb, key)
    if truth is not None:
        show_ground_truth(truth)
    if not result.in_domain and not show_refusal(result, key):
        return result
    mark = "" if result.in_domain else " (unreliable)"
    show_headline(result, mark)
    show_warnings(result)
    left, right = st.columns(2)
    with left:
        st.markdown(f"**Ensemble probabilities{mark}**")
        show_probabilities(result, key)
    with right:
        st.markdown(f"**Which model answers each class{mark}**")
        show_model_table(result)
    left, right = st.columns(2)
    with left:
        st.markdown(f"**Where the model looked{mark}**")
        cam = show_gradcam(predictor, rgb, result, key, "diagnose")
    with right:
        st.markdown(f"**Where the lesion is{mark}**")
        outline = show_mask(rgb, result)
        show_measurements(result)
    images = {"input": rgb, "gradcam": cam, **({"mask_overlay": outline} if outline is not None else {})}
    show_download(result, images, name, key, predictor.weights_dir)
    st.caption(f"Models: {', '.join(predictor.classifiers)}"
               + (" + U-Net" if predictor.segmenter else "") + " · "
               + " · ".join(f"{k} {v * 1000:.0f} ms" for k, v in result.seconds.items()))
    return result
