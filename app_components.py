"""Streamlit pieces the pages share: the active weights and their models, the HAM10000 table, the
analysis cache of each browser session, and the drawing of one analysis (probabilities, models, Grad-CAM, mask).

A module, not a page: st.navigation lists the pages explicitly. Only widgets and drawing live
here; every number comes from derm.
"""

from __future__ import annotations

import functools
import hashlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import streamlit as st

from derm import data, serving
from derm.classes import CLASSES, DESCRIPTIONS, FULL_NAMES
from derm.uncertainty import display as uncertainty_display
from derm.uncertainty.config import UncertaintyConfig
from derm.weights import WeightsNotFoundError, default_weights_dir, read_manifest

# torch, the models, pandas (derm.report) and reportlab are imported where they are used: the first page
# shows its examples without waiting seconds for them
if TYPE_CHECKING:
    import pandas as pd

    from derm import report
    from derm.pipeline import Predictor, Result
    from derm.retrieval import similar

T = TypeVar("T")
WEIGHTS_KEY = "active_weights_dir"
SESSION_CACHE_SIZE = 12  # analyses and heat maps kept per browser session: enough to flip between images
# One intra-op thread: on 2 cores shared with a training run, 2 threads made one analysis ~28 s
# (threads waiting on each other while the trainer holds the cores) against ~1 s with one.
APP_TORCH_THREADS = 1
DISCLAIMER = ("**Research demo, not a diagnosis.** These models were trained on one public dataset of "
              "dermatoscopic images and are often wrong. Do not use them for medical decisions: show any lesion that "
              "worries you to a doctor.")
DX_TYPES = {"histo": "histopathology", "follow_up": "follow-up examination", "consensus": "expert consensus",
            "confocal": "in-vivo confocal microscopy"}
DX_TYPES_SHORT = {"histo": "histology", "follow_up": "follow-up", "consensus": "consensus", "confocal": "confocal"}
PERCENT = st.column_config.NumberColumn(format="percent")


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
    import torch

    from derm.pipeline import Predictor

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


_GALLERIES: dict[tuple[str, str], similar.Gallery] = {}  # per weights and image folder, shared by every browser tab
_GALLERY_LOCK = threading.Lock()


GALLERY_RECHECK_S = 10.0  # a gallery built meanwhile from a terminal is noticed within this
_GALLERY_CHECKS: dict[tuple[str, str], tuple[float, bool, int]] = {}  # key -> (checked at, ready, cases)


def gallery_state(predictor: Predictor, source: data.ImageSource) -> tuple[bool, int]:
    """(ready, number of confirmed cases): ready when the similar cases can be shown at once (in memory or in
    the disk cache). Checking the disk cache reads the whole table and each train image's size and date (about
    0.3 s of the server for every result drawn), so an answer is trusted for GALLERY_RECHECK_S seconds."""
    from derm.retrieval import similar

    key = (str(predictor.weights_dir), str(source.path))
    if key in _GALLERIES:
        return True, len(_GALLERIES[key])
    checked = _GALLERY_CHECKS.get(key)
    if checked is None or time.monotonic() - checked[0] > GALLERY_RECHECK_S:
        checked = (time.monotonic(), *similar.gallery_status(predictor, source))
        _GALLERY_CHECKS[key] = checked
    return checked[1], checked[2]


def gallery(predictor: Predictor, source: data.ImageSource) -> similar.Gallery:
    """The confirmed cases for these models; embedding them the first time shows a progress bar."""
    from derm.retrieval import similar

    key = (str(predictor.weights_dir), str(source.path))
    with _GALLERY_LOCK:
        if key not in _GALLERIES:
            with st.status("Preparing the similar cases (once for these models)…", expanded=True) as status:
                bar = st.progress(0.0, text="Reading the confirmed cases…")
                started = time.perf_counter()

                def update(done: int, total: int) -> None:
                    left = (time.perf_counter() - started) / max(done, 1) * (total - done)
                    bar.progress(done / total, text=f"The models look at each confirmed case once: {done} of {total}, "
                                                    f"about {max(1, round(left / 60))} min left")
                _GALLERIES[key] = similar.build_gallery(predictor, source, progress=update)
                status.update(label=f"Similar cases ready: {len(_GALLERIES[key])} confirmed cases, prepared in "
                                    f"{time.perf_counter() - started:.0f} s", state="complete", expanded=False)
    return _GALLERIES[key]


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


def similar_cases(predictor: Predictor, rgb: np.ndarray, key: str, result: Result, gallery_: similar.Gallery,
                  lesion_id: str | None) -> tuple[similar.SimilarCases, float]:
    """The cases for one analysed image (and the seconds the search took), once per browser tab."""
    def compute() -> tuple[similar.SimilarCases, float]:
        from derm.retrieval import similar

        start = time.perf_counter()
        query = similar.query_for(predictor, rgb, result.features, lesion_id)
        cases = similar.find_similar(gallery_, query, similar.SimilarConfig.from_weights(predictor.weights_dir))
        return cases, time.perf_counter() - start
    return remember("similar", (str(predictor.weights_dir), key, len(gallery_), lesion_id), compute)


def inference_pool() -> serving.InferencePool:
    """The inference workers every browser session shares (derm.serving: one single-thread process per
    core, first come first served); started at the first analysis, warmed up on the default weights."""
    try:
        workers = serving.PoolConfig.from_env().workers
    except ValueError as exc:  # a mistyped $DERM_WORKERS: said on the page, not as a stack trace
        raise serving.ServingError(str(exc)) from None
    return _inference_pool(workers)


@st.cache_resource(show_spinner=False, max_entries=2, on_release=lambda pool: pool.close())
def _inference_pool(workers: int) -> serving.InferencePool:
    return serving.InferencePool(serving.PoolConfig(workers=workers), warm_weights=default_weights_dir(),
                                 in_process=load_predictor)


def served(request: Callable[[Callable[[serving.Place], None]], T]) -> T:
    """Run a request on the inference workers; while it waits, the user reads their place in line.
    A request the workers could not answer stops the page with what to do."""
    place = st.empty()
    try:
        return request(lambda where: place.info(where.message(), icon=":material/hourglass_top:"))
    except serving.ServingError as exc:
        place.empty()
        st.error(str(exc))
        st.stop()
    finally:
        place.empty()


def analysis(predictor: Predictor, rgb: np.ndarray, key: str) -> Result:
    """The result, and in the same turn on a worker the Grad-CAM the page shows first (its predicted class)."""
    def compute() -> Result:
        result, heat = served(lambda on_wait: inference_pool().analyse_and_explain(predictor.weights_dir, rgb,
                                                                                   on_wait=on_wait))
        if heat is not None:
            remember("heat_maps", (str(predictor.weights_dir), key, result.label, None), lambda: heat)
        return result
    return remember("analyses", (str(predictor.weights_dir), key), compute)


def heat_map(predictor: Predictor, rgb: np.ndarray, key: str, class_name: str, model_name: str | None) -> np.ndarray:
    return remember("heat_maps", (str(predictor.weights_dir), key, class_name, model_name), lambda: served(
        lambda on_wait: inference_pool().gradcam(predictor.weights_dir, rgb, class_name, model_name, on_wait=on_wait)))


# ----------------------------------------------------------------------------- drawing one analysis


def show_headline(result: Result, mark: str = "") -> None:
    lead = "Unreliable guess" if mark else "Most likely"
    st.subheader(f"{lead}: {FULL_NAMES[result.label]} ({result.label}), {result.confidence:.0%}")
    st.caption(DESCRIPTIONS[result.label])


def show_warnings(result: Result) -> None:
    for warning in result.warnings:
        st.warning(warning)


COVERAGE_KEY = "coverage_level"


def show_prediction_set(predictor: Predictor, result: Result, mark: str = "") -> None:
    """Beside the headline: the set of diagnoses at the chosen coverage, with the validation share behind
    it (nothing for weights without an uncertainty section)."""
    config = uncertainty_config(predictor)
    if config is None:
        return
    level = st.radio("Coverage of the prediction set", config.levels, index=config.levels.index(config.level()),
                     format_func=lambda x: f"{x:.0%}", horizontal=True, key=COVERAGE_KEY)
    item = uncertainty_display.for_image(config, result.probabilities, level, result.per_model)
    st.markdown(uncertainty_display.set_sentence(item))
    if mark:
        st.caption("The domain gate refused this image: the stated coverage does not hold for it.")
    else:
        st.caption("The guarantee holds for images like HAM10000's (same clinics and dermatoscopes); on other "
                   "clinics' images it was lower (Model card).")


def show_triage(predictor: Predictor, result: Result, mark: str = "") -> None:
    """The malignancy triage in two levels, with the validation sensitivity and specificity behind it."""
    config = uncertainty_config(predictor)
    if config is None:
        return
    item = uncertainty_display.for_image(config, result.probabilities)
    title, body = uncertainty_display.triage_sentence(item)
    (st.warning if item.flagged else st.info)(f"**{title}{mark}.** {body} Research demo: not medical advice.",
                                              icon=":material/flag:" if item.flagged else ":material/info:")


def uncertainty_config(predictor: Predictor) -> UncertaintyConfig | None:
    return UncertaintyConfig.from_manifest(predictor.manifest)


def show_ground_truth(row: pd.Series) -> None:
    how = DX_TYPES.get(row["dx_type"], row["dx_type"])
    st.info(f"HAM10000 ground truth for {row['image_id']}: **{FULL_NAMES[row['label']]} ({row['label']})**, "
            f"diagnosis confirmed by {how}.")


def show_probabilities(result: Result, mark: str = "") -> None:
    """One table, most likely class first: the ensemble's probability with a bar, the mix of slots behind it and
    each slot's own probability. One element instead of a bar per class and a second table: every element costs
    each browser a redraw, which several users at once on one machine wait for (bench/load.py)."""
    from derm import report

    table = report.ranked_model_table(result)
    table["ensemble"] = [f"{p:.1%} {report.text_bar(p)}" for p in table["ensemble"]]
    for column in result.per_model:
        table[column] = [f"{p:.1%}" for p in table[column]]
    st.markdown(f"**Ensemble probabilities, and which model answers each class{mark}**")
    st.markdown(report.markdown_table(table))
    st.caption(report.combination_caption(result))


HEAT_MAP_OPACITY = {"faint": 0.25, "medium": 0.45, "strong": 0.7}
DEFAULT_STRENGTH = "medium"


def show_gradcam(predictor: Predictor, rgb: np.ndarray, result: Result, key: str, prefix: str,
                 model_name: str | None = None, default_class: str | None = None
                 ) -> tuple[np.ndarray, report.GradcamChoice]:
    """Grad-CAM overlay with a class picker (the predicted class by default) and three strengths of the heat
    map; the overlay and which class and slot it explains (for the download). Both pickers are rows of
    buttons: lighter for the browser to draw than a drop-down list and a slider (bench/load.py)."""
    from derm import report
    from derm.explain import NOT_SEEN_NOTE, overlay_heatmap, seen_by_model

    shown_first = default_class or result.label
    class_name = st.segmented_control("Explain class", CLASSES, default=shown_first,
                                      key=f"{prefix}_cam_class_{key}") or shown_first  # a second click unselects
    strength = st.segmented_control("Heat map", list(HEAT_MAP_OPACITY), default=DEFAULT_STRENGTH,
                                    key=f"{prefix}_opacity") or DEFAULT_STRENGTH
    opacity = HEAT_MAP_OPACITY[strength]
    heat = heat_map(predictor, rgb, key, class_name, model_name)
    overlay = overlay_heatmap(rgb, heat, opacity)
    source = model_name or result.source[class_name]
    members = predictor.members.get(source, [source])
    averaged = f" (the mean of {' and '.join(members)})" if len(members) > 1 else ""
    st.image(overlay, caption=f"Grad-CAM of {source}{averaged} for {class_name}: red marks what raised that score",
             width="stretch")
    if not seen_by_model(heat).all():
        st.caption(NOT_SEEN_NOTE)
    return overlay, report.GradcamChoice.of(predictor, class_name, model_name)


def show_mask(rgb: np.ndarray, result: Result) -> np.ndarray | None:
    if result.mask is None:
        st.info("These weights have no segmenter, so there is no lesion outline.")
        return None
    from derm.explain import overlay_mask

    overlay = overlay_mask(rgb, result.mask)
    st.image(overlay, caption="U-Net lesion outline", width="stretch")
    return overlay


def show_measurements(result: Result) -> None:
    from derm import report

    if result.lesion is None:
        return
    st.markdown(report.markdown_table(report.measurement_table(result.lesion)))
    st.caption(report.NO_SCALE_NOTE)


def show_download(predictor: Predictor, rgb: np.ndarray, result: Result, images: dict[str, np.ndarray], name: str,
                  key: str, found: similar.SimilarCases | None, cam: report.GradcamChoice) -> None:
    """The zip (with the similar cases' vote and the shown Grad-CAM's class and slot) and the one-page PDF
    report (with the top class's Grad-CAM), each built only when its button is clicked (deferred download)."""
    from derm import report, report_pdf

    version = report.weights_version(predictor.weights_dir)
    meta = {"image": name, "weights": str(predictor.weights_dir), "weights_version": version}
    left, right = st.columns(2)
    left.download_button("Download result (zip: JSON, CSV, overlays)",
                         data=lambda: report.result_zip(result, images, meta, found, cam),
                         file_name=f"{Path(name).stem}-analysis.zip", mime="application/zip", on_click="ignore",
                         key=f"download_{key}", icon=":material/download:")
    top_heat = heat_map(predictor, rgb, key, result.label, None)
    pdf = report_pdf.ReportInputs(name=name, rgb=rgb, result=result, heat=top_heat,
                                  gradcam=report.GradcamChoice.of(predictor, result.label), weights_version=version,
                                  models=report_pdf.models_line(predictor), similar=found)
    right.download_button("Download report (PDF, one page)", data=lambda: report_pdf.build_pdf(pdf),
                          file_name=report_pdf.report_file_name(name), mime="application/pdf", on_click="ignore",
                          key=f"download_pdf_{key}", icon=":material/picture_as_pdf:")


def show_refusal(result: Result, key: str) -> bool:
    """The gate's refusal, reason first; True once the user has asked to see the guess anyway."""
    headline = ("the image is too small" if result.domain.kind == "small" else
                "this does not look like a dermatoscopic image of a skin lesion")
    st.error(f"**Not analysed: {headline}.** {result.domain.reason}", icon=":material/block:")
    st.caption("The models were trained on dermatoscopic close-ups only; on anything else their answer is "
               f"meaningless. (Domain gate: {result.domain.evidence()}.)")
    if not st.toggle("Show the models' guess anyway", key=f"override_{key}"):
        return False
    st.warning(f"**Unreliable.** {UNRELIABLE}")
    return True


SIMILAR_BUTTON = "Show similar confirmed cases"
CASES_PER_MINUTE = 1100  # gallery images embedded per minute on one busy core (one thread: ~1,400 on a 2-core AVX2 CPU)
PICK_KEY = "analyse_case"  # a case clicked on another page, for the Diagnose page to analyse
DIAGNOSE_PAGE = "app_pages/diagnose.py"


def analyse_on_diagnose_page(image_id: str) -> None:
    """Button callback on pages other than Diagnose: remember the case; the page then switches."""
    st.session_state[PICK_KEY] = image_id


def follow_pick_to_diagnose() -> None:
    """After analyse_on_diagnose_page, open the Diagnose page (switch_page cannot run in a callback)."""
    if st.session_state.get(PICK_KEY):
        st.switch_page(DIAGNOSE_PAGE)


def describe_vote(found: similar.SimilarCases, result: Result) -> str:
    share = found.vote[found.label]
    verdict = ("agrees with the ensemble" if found.agrees_with(result.label) else
               f"differs from the ensemble's {result.label}")
    return (f"Vote of the {found.k} most similar cases (weighted by similarity): **{FULL_NAMES[found.label]} "
            f"({found.label})**, {share:.0%}: {verdict}.")


def cases_table(shown: pd.DataFrame) -> pd.DataFrame:
    """The shown cases' image, diagnosis, how it was confirmed and similarity, a column per case, numbered as
    on the strip of thumbnails above it and on the buttons that open a case."""
    import pandas as pd

    rows = {"image": shown["image_id"], "diagnosis": shown["dx"],
            "confirmed by": shown["dx_type"].map(lambda t: DX_TYPES_SHORT.get(t, t)),
            "similarity": shown["similarity"].map(lambda v: f"{v:.2f}")}
    return pd.DataFrame({"case": list(rows), **{str(i + 1): [values.iloc[i] for values in rows.values()]
                                                  for i in range(len(shown))}})


@functools.lru_cache(maxsize=64)
def case_strip_jpeg(paths: tuple[str, ...]) -> bytes:
    """The cases' numbered thumbnails as one JPEG, made once per set of cases for every browser session."""
    from derm.retrieval import strip

    return strip.case_strip_jpeg(paths)


def pick_case(widget_key: str, on_pick: Callable[[str], None]) -> None:
    """The case chosen in a similar-case list, handed to the page's own pick callback."""
    image_id = st.session_state.get(widget_key)
    if image_id:
        on_pick(image_id)


def show_cases(shown: pd.DataFrame, key: str, on_pick: Callable[[str], None] | None) -> None:
    """The cases as one numbered strip of thumbnails, a table under it and, where a case can be opened, one
    row of numbered buttons to analyse it: three elements for the browser to draw instead of three per case."""
    from derm import report

    st.image(case_strip_jpeg(tuple(shown["image_path"])), width="stretch")
    st.markdown(report.markdown_table(cases_table(shown)))
    if on_pick is not None and len(shown):
        rank = {image_id: str(number) for number, image_id in enumerate(shown["image_id"], start=1)}
        widget_key = f"similar_{key}"
        st.pills("Analyse one of these cases", list(rank), format_func=rank.get, key=widget_key,
                 on_change=pick_case, args=(widget_key, on_pick))


def show_similar(predictor: Predictor, rgb: np.ndarray, result: Result, key: str, mark: str = "",
                 lesion_id: str | None = None, on_pick: Callable[[str], None] | None = None
                 ) -> similar.SimilarCases | None:
    """The most similar confirmed cases beside the diagnosis, and their vote against the ensemble's answer
    (returned; None where there are none to show yet).

    Building the gallery the first time takes minutes, so then it waits for the user's click.
    """
    from derm.retrieval import similar

    st.markdown(f"**Similar confirmed cases{mark}**")
    source = image_source_or_none()
    if source is None:
        st.caption("No HAM10000 images here, so there are no confirmed cases to compare with.")
        return None
    ready, size = gallery_state(predictor, source)
    if not ready and not st.button(SIMILAR_BUTTON, key=f"similar_build_{key}", icon=":material/image_search:"):
        st.caption(f"The first time, the models look at each of the {size} confirmed cases once (on one CPU core "
                   f"roughly {max(1, round(size / CASES_PER_MINUTE))} min); afterwards similar cases appear at once. "
                   "`python -m derm similar-gallery` does the same from a terminal, on every core.")
        return None
    cases_gallery = gallery(predictor, source)
    found, seconds = similar_cases(predictor, rgb, key, result, cases_gallery, lesion_id)
    st.markdown(describe_vote(found, result))
    show_cases(found.cases.head(similar.SimilarConfig().shown), key, on_pick)
    st.caption(f"From the {cases_gallery.description} ({len(cases_gallery)} confirmed cases), by cosine similarity "
               "of the models' own features; this image's own lesion and near-copies of it are left out. "
               f"Search {seconds * 1000:.0f} ms.")
    return found


UNRELIABLE = ("Every number below comes from models that were not made for this image: treat all of it as "
              "meaningless.")


def show_analysis(predictor: Predictor, rgb: np.ndarray, name: str, truth: pd.Series | None = None,
                  on_pick: Callable[[str], None] | None = None) -> Result:
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
    head, sets = st.columns([3, 2])
    with head:
        show_headline(result, mark)
    with sets:
        show_prediction_set(predictor, result, mark)
    show_triage(predictor, result, mark)
    show_warnings(result)
    show_probabilities(result, mark)
    found = show_similar(predictor, rgb, result, key, mark, None if truth is None else str(truth["lesion_id"]),
                         on_pick)
    left, right = st.columns(2)
    with left:
        st.markdown(f"**Where the model looked{mark}**")
        cam, cam_choice = show_gradcam(predictor, rgb, result, key, "diagnose")
    with right:
        st.markdown(f"**Where the lesion is{mark}**")
        outline = show_mask(rgb, result)
        show_measurements(result)
    images = {"input": rgb, "gradcam": cam, **({"mask_overlay": outline} if outline is not None else {})}
    show_download(predictor, rgb, result, images, name, key, found, cam_choice)
    st.caption(f"Models: {', '.join(predictor.classifiers)}"
               + (" + U-Net" if predictor.segmenter else "") + " · "
               + " · ".join(f"{k} {v * 1000:.0f} ms" for k, v in result.seconds.items()))
    return result
