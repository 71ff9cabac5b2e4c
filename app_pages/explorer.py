"""Test-set explorer: where each model goes wrong, from the shipped test predictions.

Works from weights/test_predictions.csv and metrics.json alone; shows the images, their Grad-CAM
and lesion outline from the full HAM10000 when present, else from the test split shipped in
data/ham10000-test (every clone has it).
"""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

import app_components as ui
from derm import catalog, explorer, report
from derm.classes import CLASSES, FULL_NAMES
from derm.imageio import load_image

OPEN_KEY = "explorer_image"
PAGE_SIZE = 12
GRID_COLUMNS = 4
SIZE_PX = 440


def confusion_figure(cells: pd.DataFrame) -> go.Figure:
    """Square markers, one per cell, coloured by the row rate: clickable, unlike a heatmap."""
    fig = go.Figure(go.Scatter(
        x=cells["pred"], y=cells["true"], mode="markers+text",
        marker=dict(symbol="square", size=SIZE_PX // 10, color=cells["rate"], colorscale="Blues", cmin=0, cmax=1,
                    showscale=True, colorbar=dict(title="share of row", tickformat=".0%"), line=dict(width=1, color="#ccc")),
        text=[f"{n}<br>{r:.0%}" for n, r in zip(cells["count"], cells["rate"])],
        textfont=dict(color=["white" if r > 0.5 else "#1f2a30" for r in cells["rate"]], size=11),
        customdata=cells[["true", "pred"]].to_numpy(),
        selected=dict(marker=dict(opacity=1.0)), unselected=dict(marker=dict(opacity=0.45)),
        hovertemplate="true %{customdata[0]}, predicted %{customdata[1]}<br>%{text}<extra></extra>"))
    axis = dict(categoryorder="array", categoryarray=list(CLASSES), showgrid=False, zeroline=False, constrain="domain")
    fig.update_layout(xaxis=dict(title="predicted", side="top", **axis),
                      yaxis=dict(title="true", autorange="reversed", scaleanchor="x", **axis),
                      width=SIZE_PX + 90, height=SIZE_PX, margin=dict(l=10, r=10, t=40, b=10), clickmode="event+select")
    return fig


def roc_figure(curves: dict[str, dict]) -> go.Figure:
    fig = go.Figure(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dash", color="#999"),
                               name="chance", hoverinfo="skip"))
    for name, curve in curves.items():
        fig.add_trace(go.Scatter(x=curve["fpr"], y=curve["tpr"], mode="lines", name=f"{name} (AUC {curve['auc']:.2f})"))
    fig.update_layout(xaxis=dict(title="false positive rate", range=[0, 1]),
                      yaxis=dict(title="true positive rate", range=[0, 1.02]), height=420,
                      margin=dict(l=10, r=10, t=10, b=10))
    return fig


def show_headline(report_dict: dict) -> None:
    columns = st.columns(5)
    columns[0].metric("test images", report_dict["n"])
    for column, (label, key) in zip(columns[1:], [("accuracy", "accuracy"), ("balanced accuracy", "balanced_accuracy"),
                                                   ("macro F1", "macro_f1"), ("macro AUC", "macro_auc")]):
        value = report_dict.get(key)
        column.metric(label, f"{value:.3f}" if value is not None else "n/a")


def show_confusion(frame: pd.DataFrame, model: str) -> None:
    chart_key = f"confusion_{model}"
    st.plotly_chart(confusion_figure(explorer.confusion_cells(frame, model)), key=chart_key, width="content",
                    on_select=lambda: explorer.apply_cell_click(st.session_state, st.session_state.get(chart_key)),
                    selection_mode="points")
    st.caption("Counts and row-normalised rates (recall on the diagonal). Click a cell to list its images.")


def chosen_cell() -> tuple[str, str] | None:
    """The cell to list: set by a click on the matrix, or chosen here (keyboard-friendly)."""
    left, right = st.columns(2)
    true = left.selectbox("True class", CLASSES, index=None, key=explorer.TRUE_KEY, placeholder="click a cell")
    pred = right.selectbox("Predicted as", CLASSES, index=None, key=explorer.PRED_KEY, placeholder="click a cell")
    return (true, pred) if true and pred else None


def open_image(image_id: str) -> None:
    st.session_state[OPEN_KEY] = image_id


def show_grid(images: pd.DataFrame, table: pd.DataFrame, page_key: str) -> None:
    """Thumbnails of one page of the cell, each with an Open button."""
    pages = max(1, math.ceil(len(images) / PAGE_SIZE))
    page = st.number_input(f"Page (of {pages})", 1, pages, 1, key=page_key) if pages > 1 else 1
    shown = images.iloc[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
    for start in range(0, len(shown), GRID_COLUMNS):
        for column, (_, item) in zip(st.columns(GRID_COLUMNS), shown.iloc[start:start + GRID_COLUMNS].iterrows()):
            row = catalog.find_image(table, item["image_id"])
            if row is not None:
                column.image(row["image_path"], width="stretch")
            column.caption(f"{item['image_id']} · {item['predicted']} {item['confidence']:.0%}")
            column.button("Open", key=f"open_{item['image_id']}", on_click=open_image, args=(item["image_id"],))


def show_opened(frame: pd.DataFrame, table: pd.DataFrame, model: str) -> None:
    """Grad-CAM and lesion outline of the opened test image, drawn as on the Diagnose page."""
    image_id = st.session_state.get(OPEN_KEY)
    if not image_id:
        st.info("Open an image to see where the model looked and the lesion outline.")
        return
    row = catalog.find_image(table, image_id)
    prediction = frame[frame["image_id"] == image_id]
    if row is None or prediction.empty:
        st.warning(f"{image_id} is not in this test set.")
        return
    predicted = prediction.iloc[0][f"{model}_pred"]
    st.markdown(f"**{image_id}**: true {row['label']}, {model} predicted {predicted} "
                f"({prediction.iloc[0][f'{model}_{predicted}']:.0%})")
    predictor = ui.predictor_or_none()
    if predictor is None:
        return
    rgb = load_image(catalog.image_path(row))
    key = ui.image_key(rgb)
    result = ui.analysis(predictor, rgb, key)
    ui.show_gradcam(predictor, rgb, result, key, "explorer", None if model == "ensemble" else model,
                    default_class=predicted)
    ui.show_mask(rgb, result)
    ui.show_measurements(result)
    ui.show_similar(predictor, rgb, result, key, lesion_id=str(row["lesion_id"]), on_pick=ui.analyse_on_diagnose_page)


def show_cell(frame: pd.DataFrame, table: pd.DataFrame | None, model: str, cell: tuple[str, str]) -> None:
    true, pred = cell
    order = st.radio("Sort by confidence", ["highest first", "lowest first"], horizontal=True, key="explorer_sort")
    images = explorer.images_in_cell(frame, model, true, pred, highest_first=order == "highest first")
    st.markdown(f"**{len(images)} test images of {FULL_NAMES[true]} ({true}) predicted as "
                f"{FULL_NAMES[pred]} ({pred}) by {model}**")
    if images.empty:
        return
    if table is None:
        st.caption("HAM10000 images are not available here: the list only.")
        st.dataframe(images, hide_index=True, column_config={"confidence": ui.PERCENT, "p_true": ui.PERCENT})
        return
    grid, detail = st.columns([3, 2])
    with grid:
        show_grid(images, table, f"explorer_page_{model}_{true}_{pred}")
    with detail:
        show_opened(frame, table, model)
    with st.expander("As a table"):
        st.dataframe(images, hide_index=True, column_config={"confidence": ui.PERCENT, "p_true": ui.PERCENT})


def main() -> None:
    ui.follow_pick_to_diagnose()
    st.title("Test-set explorer")
    weights_dir = ui.active_weights_dir()
    try:
        frame = explorer.load_predictions(weights_dir)
    except FileNotFoundError as exc:
        st.warning(str(exc))
        return
    metrics = explorer.load_metrics(weights_dir)
    model = st.selectbox("Model", explorer.models_in(frame), key="explorer_model")
    report_dict = explorer.report_for(metrics, frame, model)
    show_headline(report_dict)
    left, right = st.columns(2)
    with left:
        show_confusion(frame, model)
    with right:
        st.markdown("**Per class**")
        st.dataframe(report.per_class_table(report_dict).drop(columns="name"), hide_index=True,
                     column_config={c: st.column_config.NumberColumn(format="%.2f")
                                    for c in ("precision", "recall", "f1", "auc")})
        with st.expander("ROC curves (one class against the rest)"):
            st.plotly_chart(roc_figure(explorer.roc_curves(frame, model)), key=f"roc_{model}")
    cell = chosen_cell()
    if cell is None:
        st.info("Click a cell of the confusion matrix (or choose a true and a predicted class) to list its images.")
        return
    show_cell(frame, ui.ham_table_or_none(), model, cell)


main()
