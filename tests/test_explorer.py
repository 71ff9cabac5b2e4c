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


# ----------------------------------------------------------------------------- patient metadata


@pytest.fixture(scope="module")
def patients(frame, data_dir) -> pd.DataFrame:
    from derm import data

    return explorer.with_patient(frame[["image_id"]], data.load_table(data_dir))


def test_every_test_image_gets_its_patients_metadata(patients, data_dir):
    metadata = pd.read_csv(data_dir / "HAM10000_metadata.csv").set_index("image_id")
    assert list(patients.columns) == ["image_id", *explorer.PATIENT_COLUMNS]
    for column in explorer.PATIENT_COLUMNS:
        expected = metadata.loc[patients["image_id"], column].to_numpy()
        assert pd.Series(patients[column].to_numpy()).equals(pd.Series(expected)), column
    assert patients["sex"].notna().all() and patients["dx_type"].isin(["histo", "follow_up", "consensus", "confocal"]).all()


def test_without_a_metadata_table_the_columns_are_there_and_empty(frame):
    images = explorer.with_patient(frame[["image_id"]].head(3), None)
    assert images[list(explorer.PATIENT_COLUMNS)].isna().all().all()


def test_the_patient_filter_keeps_exactly_the_matching_images(patients):
    sites = tuple(patients["localization"].value_counts().index[:2])
    chosen = explorer.PatientFilter(ages=(40, 60), sexes=("female",), sites=sites, confirmations=("histo",))
    kept = chosen.apply(patients)
    assert 0 < len(kept) < len(patients)
    assert kept["age"].between(40, 60).all() and (kept["sex"] == "female").all()
    assert kept["localization"].isin(sites).all() and (kept["dx_type"] == "histo").all()
    matching = [i for i, r in patients.iterrows() if 40 <= r["age"] <= 60 and r["sex"] == "female"
                and r["localization"] in sites and r["dx_type"] == "histo"]
    assert sorted(kept["image_id"]) == sorted(patients.loc[matching, "image_id"])
    assert chosen.describe() == f"age 40–60; female; {', '.join(sites)}; histo"


def test_an_empty_patient_filter_keeps_everything_even_unknown_ages(patients):
    assert explorer.PatientFilter().apply(patients)["image_id"].tolist() == patients["image_id"].tolist()
    assert explorer.PatientFilter().describe() == ""


def test_patient_choices_and_ages_come_from_the_images(patients):
    choices = explorer.patient_choices(patients)
    assert set(choices["sex"]) == set(patients["sex"].dropna()) and choices["sex"] == sorted(choices["sex"])
    assert set(choices["dx_type"]) <= {"histo", "follow_up", "consensus", "confocal"}
    assert explorer.age_bounds(patients) == (int(patients["age"].min()), int(patients["age"].max()))


def test_describe_patient_reads_in_one_line():
    row = {"age": 45.0, "sex": "female", "localization": "back", "dx_type": "histo"}
    assert explorer.describe_patient(row) == "45 y · female · back · histology"
    unknown = {"age": float("nan"), "sex": "unknown", "localization": None, "dx_type": "follow_up"}
    assert explorer.describe_patient(unknown) == "age unknown · sex unknown · site unknown · follow-up"
