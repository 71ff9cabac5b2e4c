import numpy as np
import pandas as pd
import pytest

from derm import explorer
from derm.classes import CLASSES
from derm.metrics import classification_report


@pytest.fixture(scope="module")
def frame(tiny_weights) -> pd.DataFrame:
    return explorer.load_predictions(tiny_weights)


def test_confusion_cells_match_the_shipped_confusion_matrix(frame, tiny_weights):
    metrics = explorer.load_metrics(tiny_weights)
    for model in explorer.models_in(frame):
        cells = explorer.confusion_cells(frame, model)
        assert len(cells) == len(CLASSES) ** 2 and cells["count"].sum() == len(frame)
        matrix = cells.pivot(index="true", columns="pred", values="count").loc[list(CLASSES), list(CLASSES)]
        assert matrix.to_numpy().tolist() == metrics["classifiers"]["test"][model]["confusion_matrix"]
        rates = cells.groupby("true")["rate"].sum()
        present = frame["true"].unique()
        assert np.allclose(rates[present], 1.0) and np.allclose(rates.drop(present), 0.0)


def test_models_in_lists_the_ensemble_first(frame):
    assert explorer.models_in(frame) == ["ensemble", "resnet18", "resnet50"]


def test_images_in_cell_are_that_cell_sorted_by_confidence(frame):
    cells = explorer.confusion_cells(frame, "resnet50")
    busiest = cells.sort_values("count").iloc[-1]
    images = explorer.images_in_cell(frame, "resnet50", busiest["true"], busiest["pred"])
    assert len(images) == busiest["count"]
    assert (images["true"] == busiest["true"]).all() and (images["predicted"] == busiest["pred"]).all()
    assert images["confidence"].is_monotonic_decreasing
    lowest = explorer.images_in_cell(frame, "resnet50", busiest["true"], busiest["pred"], highest_first=False)
    assert lowest["confidence"].is_monotonic_increasing
    expected = frame.set_index("image_id").loc[images["image_id"], f"resnet50_{busiest['pred']}"]
    assert np.allclose(images["confidence"], expected)


def test_roc_curves_agree_with_the_report_auc(frame):
    curves = explorer.roc_curves(frame, "ensemble")
    report = classification_report(explorer.true_indices(frame), explorer.probabilities(frame, "ensemble"))
    assert set(curves) == {c for c, v in report["per_class"].items() if v["auc"] is not None}
    for name, curve in curves.items():
        assert curve["auc"] == pytest.approx(report["per_class"][name]["auc"])
        assert curve["fpr"][0] == 0 and curve["tpr"][-1] == 1


def test_report_for_falls_back_to_computing_from_predictions(frame, tiny_weights):
    stored = explorer.report_for(explorer.load_metrics(tiny_weights), frame, "resnet18")
    computed = explorer.report_for({}, frame, "resnet18")
    assert computed["confusion_matrix"] == stored["confusion_matrix"]
    assert computed["balanced_accuracy"] == pytest.approx(stored["balanced_accuracy"], abs=1e-4)


def plotly_event(*points: dict) -> dict:
    """The shape st.plotly_chart puts in st.session_state when points are clicked."""
    return {"selection": {"points": list(points), "point_indices": list(range(len(points))), "box": [], "lasso": []}}


def test_a_click_on_a_cell_sets_the_explorer_cell():
    state: dict = {}
    event = plotly_event({"x": "NV", "y": "MEL", "customdata": ["MEL", "NV"], "point_index": 33})
    assert explorer.apply_cell_click(state, event)
    assert (state[explorer.TRUE_KEY], state[explorer.PRED_KEY]) == ("MEL", "NV")


@pytest.mark.parametrize("event, expected", [
    (None, None),
    (plotly_event(), None),
    (plotly_event({"x": "BCC", "y": "AKIEC"}), ("AKIEC", "BCC")),  # no customdata: the axes say it
    ({"points": [{"customdata": ["DF", "VASC"]}]}, ("DF", "VASC")),  # the selection part alone
    (plotly_event({"customdata": ["XYZ", "NV"]}, {"customdata": ["BKL", "NV"]}), ("BKL", "NV")),
])
def test_cell_from_selection(event, expected):
    assert explorer.cell_from_selection(event) == expected


def test_an_empty_click_keeps_the_chosen_cell():
    state = {explorer.TRUE_KEY: "NV", explorer.PRED_KEY: "NV"}
    assert not explorer.apply_cell_click(state, plotly_event())
    assert state == {explorer.TRUE_KEY: "NV", explorer.PRED_KEY: "NV"}


def test_missing_predictions_say_which_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="test_predictions.csv"):
        explorer.load_predictions(tmp_path)
    assert explorer.load_metrics(tmp_path) == {}
