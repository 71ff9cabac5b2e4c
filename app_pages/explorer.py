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
from derm.uncertainty import config as uncertainty
from derm.uncertainty import report as uncertainty_report
from derm.uncertainty import triage as uncertainty_triage

OPEN_KEY = "explorer_image"
PAGE_SIZE = 12
GRID_COLUMNS = 4
MATRIX_HEIGHT_PX = 540  # the width follows the column; about square at a desktop's half width
DARK_TEXT, CHOSEN_OUTLINE = "#1f2a30", "#e4572e"


def confusion_figure(cells: pd.DataFrame, chosen: tuple[str, str] | None = None) -> go.Figure:
    """The matrix as a heatmap coloured by the row rate, with the counts as annotations (a click
    never dims them), transparent markers on the cell centres to click (Plotly reports clicks on
    scatter points, not on heatmaps) and an outline round the chosen cell."""
    rates = cells.pivot(index="true", columns="pred", values="rate").reindex(index=CLASSES, columns=CLASSES)
    fig = go.Figure(go.Heatmap(z=rates.to_numpy(), x=list(CLASSES), y=list(CLASSES), zmin=0, zmax=1,
                               colorscale="Blues", showscale=False, hoverinfo="skip", xgap=2, ygap=2))
    fig.add_trace(go.Scatter(
        x=cells["pred"], y=cells["true"], mode="markers", showlegend=False,
        marker=dict(symbol="square", size=36, opacity=0),
        selected=dict(marker=dict(opacity=0)), unselected=dict(marker=dict(opacity=0)),
        customdata=cells[["true", "pred", "count", "rate"]].to_numpy(dtype=object),
        hovertemplate="true %{customdata[0]}, predicted %{customdata[1]}: %{customdata[2]} images, "
                      "%{customdata[3]:.0%} of the row<extra></extra>"))
    for _, cell in cells.iterrows():
        fig.add_annotation(x=cell["pred"], y=cell["true"], text=f"<b>{cell['count']}</b><br>{cell['rate']:.0%}",
                           showarrow=False, font=dict(size=13, color="white" if cell["rate"] > 0.5 else DARK_TEXT))
    if chosen is not None and all(c in CLASSES for c in chosen):
        x, y = CLASSES.index(chosen[1]), CLASSES.index(chosen[0])
        fig.add_shape(type="rect", x0=x - 0.5, x1=x + 0.5, y0=y - 0.5, y1=y + 0.5,
                      line=dict(color=CHOSEN_OUTLINE, width=4))
    axis = dict(categoryorder="array", categoryarray=list(CLASSES), showgrid=False, zeroline=False,
                tickfont=dict(size=13))
    fig.update_layout(xaxis=dict(title="predicted", side="top", **axis),
                      yaxis=dict(title="true", autorange="reversed", **axis), height=MATRIX_HEIGHT_PX,
                      margin=dict(l=10, r=10, t=40, b=10), clickmode="event+select", hovermode="closest",
                      hoverdistance=-1, dragmode=False, plot_bgcolor="white")
    return fig


def roc_figure(curves: dict[str, dict]) -> go.Figure:
    fig = go.Figure(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dash", color="#999"),
                               name="chance", hoverinfo="skip"))
    for name, curve in curves.items():
        fig.add_trace(go.Scatter(x=curve["fpr"], y=curve["tpr"], mode="lines", name=f"{name} (AUC {curve['auc']:.2f})"))
    fig.update_layout(xaxis=dict(title="false positive rate", range=[0, 1], constrain="domain"),
                      yaxis=dict(title="true positive rate", range=[0, 1.02], scaleanchor="x", constrain="domain"),
                      height=520, margin=dict(l=10, r=10, t=10, b=10))
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
    chosen = (st.session_state.get(explorer.TRUE_KEY), st.session_state.get(explorer.PRED_KEY))
    st.plotly_chart(confusion_figure(explorer.confusion_cells(frame, model), chosen), key=chart_key, width="stretch",
                    on_select=lambda: explorer.apply_cell_click(st.session_state, st.session_state.get(chart_key)),
                    selection_mode="points")
    st.caption("Counts and row-normalised rates (recall on the diagonal); darker blue is a larger share of the "
               "row. Click a cell to list its images.")


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
            column.caption(f"{item['image_id']} · {item['predicted']} {item['confidence']:.0%}  \n"
                           f"{explorer.describe_patient(item)}")
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


def show_similar_to_opened(table: pd.DataFrame) -> None:
    """The opened image's similar confirmed cases in a row across the page (in the detail column their
    buttons and captions would be squeezed to a few letters each)."""
    image_id = st.session_state.get(OPEN_KEY)
    row = catalog.find_image(table, image_id) if image_id else None
    predictor = ui.predictor_or_none() if row is not None else None
    if predictor is None:
        return
    rgb = load_image(catalog.image_path(row))
    key = ui.image_key(rgb)
    ui.show_similar(predictor, rgb, ui.analysis(predictor, rgb, key), key, mark=f" to {image_id}",
                    lesion_id=str(row["lesion_id"]), on_pick=ui.analyse_on_diagnose_page)


TABLE_COLUMNS = {"confidence": ui.PERCENT, "p_true": ui.PERCENT, "age": st.column_config.NumberColumn(format="%d"),
                 "localization": st.column_config.TextColumn("body site"),
                 "dx_type": st.column_config.TextColumn("confirmed by")}


def patient_filter(patients: pd.DataFrame) -> explorer.PatientFilter:
    """Pickers for age, sex, body site and how the diagnosis was confirmed, offering what the test set
    holds; they keep their choice from cell to cell."""
    choices = explorer.patient_choices(patients)
    bounds = explorer.age_bounds(patients)
    age, sex, site, how = st.columns([2, 2, 3, 3])
    ages = age.slider("Age", *bounds, value=bounds, step=5, key="explorer_age") if bounds else None
    sexes = sex.multiselect("Sex", choices["sex"], key="explorer_sex", placeholder="any")
    sites = site.multiselect("Body site", choices["localization"], key="explorer_site", placeholder="any")
    confirmations = how.multiselect("Diagnosis confirmed by", choices["dx_type"], key="explorer_confirmed",
                                    format_func=lambda t: ui.DX_TYPES.get(t, t), placeholder="any")
    return explorer.PatientFilter(None if ages is None or tuple(ages) == bounds else tuple(ages), tuple(sexes),
                                  tuple(sites), tuple(confirmations))


def show_cell(frame: pd.DataFrame, table: pd.DataFrame | None, model: str, cell: tuple[str, str]) -> None:
    true, pred = cell
    order = st.radio("Sort by confidence", ["highest first", "lowest first"], horizontal=True, key="explorer_sort")
    images = explorer.images_in_cell(frame, model, true, pred, highest_first=order == "highest first")
    what = f"test images of {FULL_NAMES[true]} ({true}) predicted as {FULL_NAMES[pred]} ({pred}) by {model}"
    if table is None:
        st.markdown(f"**{len(images)} {what}**")
        if not images.empty:
            st.caption("HAM10000 images are not available here: the list only.")
            st.dataframe(images, hide_index=True, column_config=TABLE_COLUMNS)
        return
    chosen = patient_filter(explorer.with_patient(frame[["image_id"]], table))
    shown = chosen.apply(explorer.with_patient(images, table))
    filtered = chosen.describe()
    st.markdown(f"**{len(shown)} of {len(images)} {what}** (patients: {filtered})" if filtered else
                f"**{len(images)} {what}**")
    if shown.empty:
        if not images.empty:
            st.info("No image of this cell matches the patient filter.")
        return
    grid, detail = st.columns([3, 2])
    with grid:
        show_grid(shown, table, f"explorer_page_{model}_{true}_{pred}")
    with detail:
        show_opened(frame, table, model)
    show_similar_to_opened(table)
    with st.expander("As a table"):
        st.dataframe(shown, hide_index=True, column_config=TABLE_COLUMNS)


def triage_roc_figure(roc: dict) -> go.Figure:
    """The malignancy score's ROC with the shipped operating point marked."""
    fig = go.Figure(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dash", color="#999"),
                               name="chance", hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=roc["fpr"], y=roc["tpr"], mode="lines", name=f"MEL + BCC + AKIEC (AUC {roc['auc']:.2f})"))
    fig.add_trace(go.Scatter(x=[roc["point_fpr"]], y=[roc["point_tpr"]], mode="markers", name="operating point "
                             f"(score >= {roc['threshold']:.2f}, chosen on validation)",
                             marker=dict(size=12, color=CHOSEN_OUTLINE, symbol="x")))
    fig.update_layout(xaxis=dict(title="false positive rate (1 - specificity)", range=[0, 1]),
                      yaxis=dict(title="sensitivity", range=[0, 1.02]), height=380, margin=dict(l=10, r=10, t=10, b=10))
    return fig


def show_prediction_sets(frame: pd.DataFrame) -> None:
    """The ensemble's prediction sets and malignancy triage on the test split: coverage, set sizes, the
    images whose set missed, and the triage point on its ROC."""
    predictor_manifest = ui.manifest_or_none(ui.active_weights_dir())
    config = uncertainty.UncertaintyConfig.from_manifest(predictor_manifest or {})
    if config is None or "ensemble_NV" not in frame.columns:
        st.caption("These weights have no prediction sets (python -m derm calibrate-uncertainty fits them).")
        return
    level = st.radio("Coverage level", config.levels, index=config.levels.index(config.level()), horizontal=True,
                     format_func=lambda x: f"{x:.0%}", key="explorer_coverage")
    sets, measured = uncertainty_report.test_split_sets(frame, config, level)
    y = sets["true"].map(CLASSES.index).to_numpy()
    columns = st.columns(3)
    columns[0].metric("test coverage", f"{measured['coverage']:.1%}", help=f"validation: {config.val_coverage[level]:.1%}")
    columns[1].metric("mean set size", f"{measured['mean_size']:.2f}")
    columns[2].metric("lowest class coverage", f"{measured['min_class_coverage']:.1%}")
    left, right = st.columns(2)
    sizes = pd.DataFrame({"set size": list(measured["size_counts"]), "images": list(measured["size_counts"].values())})
    left.bar_chart(sizes, x="set size", y="images", height=260)
    right.dataframe(pd.DataFrame([{"class": c, **v} for c, v in measured["per_class"].items()]), hide_index=True,
                    column_config={"coverage": ui.PERCENT, "mean_size": st.column_config.NumberColumn(format="%.2f")})
    roc = uncertainty_triage.malignancy_roc(explorer.probabilities(frame, "ensemble"), y, config.triage.threshold)
    if roc is not None:
        st.markdown(f"**Malignancy triage**: sensitivity {roc['point_tpr']:.1%}, specificity {1 - roc['point_fpr']:.1%} "
                    "on the test split at the operating point chosen on validation.")
        st.plotly_chart(triage_roc_figure(roc), key="triage_roc", width="stretch")
    if st.toggle("List the test images whose set missed the true diagnosis", key="explorer_missed"):
        st.dataframe(uncertainty_report.missed(sets), hide_index=True)


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
    left, right = st.columns([3, 2])  # the matrix gets the room to read its 49 cells
    with left:
        show_confusion(frame, model)
    with right:
        st.markdown("**Per class**")
        st.dataframe(report.per_class_table(report_dict).drop(columns="name"), hide_index=True,
                     column_config={c: st.column_config.NumberColumn(format="%.2f")
                                    for c in ("precision", "recall", "f1", "auc")})
    with st.expander("ROC curves (one class against the rest)"):
        st.plotly_chart(roc_figure(explorer.roc_curves(frame, model)), key=f"roc_{model}", width="stretch")
    with st.expander("Prediction sets and malignancy triage (ensemble)"):
        show_prediction_sets(frame)
    cell = chosen_cell()
    if cell is None:
        st.info("Click a cell of the confusion matrix (or choose a true and a predicted class) to list its images.")
        return
    show_cell(frame, ui.ham_table_or_none(), model, cell)


main()
