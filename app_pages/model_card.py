"""Model card: what the active models are, how well they did on held-out data, how they were made,
what they are for and what they must not be used for."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

import app_components as ui
from derm import explorer, modelcard, report
from derm.classes import CLASSES
from derm.data import REPO_ROOT

SCORE = "{:.3f}"
RATE = "{:.2f}"
HOW_MADE = ("best epoch", "epochs", "training minutes", "run", "code version")


def show_table(frame, formats: dict[str, str] | None = None, where=st) -> None:
    """A static table that wraps long cells (full class names, run names) instead of cutting them off,
    with an em dash where a value was not measured or does not apply."""
    where.table(report.for_display(frame, formats), hide_index=True, border="horizontal")


def confusion_heatmap(matrix: list[list[int]], title: str) -> go.Figure:
    fig = go.Figure(go.Heatmap(z=matrix, x=list(CLASSES), y=list(CLASSES), colorscale="Blues", showscale=False,
                               text=matrix, texttemplate="%{text}", hovertemplate="true %{y}, predicted %{x}: %{z}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="predicted", yaxis=dict(title="true", autorange="reversed"),
                      height=360, margin=dict(l=10, r=10, t=40, b=10))
    return fig


def show_headline(weights_dir) -> None:
    """The same table and limitations as MODEL_CARD.md, from the same functions of derm.modelcard."""
    st.header("Results at a glance")
    st.table(modelcard.headline_table(weights_dir), hide_index=True, border="horizontal")  # wraps long cells
    st.header("Limitations")
    st.markdown("\n".join(modelcard.limitations_section(modelcard.load(weights_dir))[2:]))


def show_results(metrics: dict) -> None:
    st.header("Results")
    for split, label in (("test", "Test split (scored once, at export)"), ("val", "Validation split (used for every choice)")):
        table = report.summary_table(metrics, split)
        if not table.empty:
            st.markdown(f"**{label}**")
            show_table(table, {c: SCORE for c in table.columns[2:]})
    test_reports = metrics.get("classifiers", {}).get("test", {})
    if test_reports:
        st.markdown("**Per class, test split**")
        names = sorted(test_reports, key=lambda n: (n != "ensemble", n))
        for tab, name in zip(st.tabs(names), names):
            left, right = tab.columns([3, 2])
            show_table(report.per_class_table(test_reports[name]),
                       {c: RATE for c in ("precision", "recall", "f1", "auc")}, where=left)
            right.plotly_chart(confusion_heatmap(test_reports[name]["confusion_matrix"], f"{name}: confusion matrix"),
                               key=f"card_cm_{name}")
    segmenter = report.segmenter_table(metrics)
    if not segmenter.empty:
        st.markdown("**Lesion segmentation (U-Net), scored at the masks' full 600x450**")
        show_table(segmenter, {c: SCORE for c in segmenter.columns[2:]})


def show_manifest(manifest: dict) -> None:
    st.header("The models")
    models = report.models_table(manifest)
    made = [c for c in models.columns if c in HOW_MADE]  # a second table: one of 13 columns would not fit
    show_table(models.drop(columns=made), {"temperature": "{:.3f}", "threshold": RATE})
    st.markdown("**How each was trained**")
    show_table(models[["model", *made]])
    ensemble = manifest.get("ensemble", {})
    st.markdown(f"**How the slots combine** (prior correction τ = {ensemble.get('prior_correction', 0)}): each "
                "class's score is a weighted mix of the slots' scores ('weights'; 'model' carries the most), chosen "
                "by cross-validation inside the validation split; the model card below has the candidates' scores.")
    show_table(report.routing_table(manifest), {"share": "{:.1%}"})
    ood = ensemble.get("ood")
    if ood:
        st.caption(f"Out-of-distribution warning: {ood['model']} energy below {ood['energy_threshold']} "
                   f"({ood.get('rule', '')}).")
    st.markdown("**Training commands**")
    st.code("\n".join(entry["training"]["command"] for entry in manifest.get("models", {}).values()
                      if "training" in entry) or "(not recorded)", language="bash", wrap_lines=True)


def show_data(metrics: dict) -> None:
    st.header("Data")
    counts = report.split_counts_table(metrics)
    st.markdown("HAM10000, split 80/10/10 by **lesion** (no lesion in two splits), stratified by class.")
    if not counts.empty:
        st.dataframe(counts)


def main() -> None:
    st.title("Model card")
    weights_dir = ui.active_weights_dir()
    card = REPO_ROOT / "MODEL_CARD.md"
    if card.is_file():
        with st.expander("MODEL_CARD.md", expanded=False):
            st.markdown(card.read_text())
    st.markdown("\n".join(modelcard.INTENDED_USE[2:]))
    manifest = ui.manifest_or_none(weights_dir)
    if manifest is None:
        st.warning(f"No trained weights at {weights_dir} (manifest.json missing): nothing to report yet.")
    else:
        metrics = explorer.load_metrics(weights_dir)
        if "test" in metrics.get("classifiers", {}):
            show_headline(weights_dir)
        show_results(metrics)
        show_manifest(manifest)
        show_data(metrics)
    st.markdown("\n".join(modelcard.CITATION[2:]))


main()
