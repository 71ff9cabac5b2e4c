import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from derm import report
from derm.classes import CLASSES, FULL_NAMES
from derm.explain import overlay_mask
from derm.imageio import load_image
from derm.pipeline import Predictor


@pytest.fixture(scope="module")
def analysed(tiny_weights, original_image):
    rgb = load_image(original_image)
    return rgb, Predictor(tiny_weights).analyse(rgb)


def test_probability_table_is_sorted_and_complete(analysed):
    _, result = analysed
    table = report.probability_table(result)
    assert list(table["class"])[0] == result.label
    assert sorted(table["class"]) == sorted(CLASSES)
    assert table["probability"].is_monotonic_decreasing
    assert table["probability"].sum() == pytest.approx(1.0, abs=1e-4)


def test_the_ranked_model_table_puts_the_most_likely_class_first_with_its_name(analysed):
    _, result = analysed
    table = report.ranked_model_table(result)
    assert list(table.columns) == ["class", "diagnosis", "ensemble", *result.per_model, "weights"]
    assert len(table) == len(CLASSES)
    assert table["ensemble"].is_monotonic_decreasing and table["class"][0] == result.label
    assert table["diagnosis"][0] == FULL_NAMES[result.label]
    assert report.text_bar(1.0) == "█" * 10 and report.text_bar(0.5, width=20) == "█" * 10
    assert report.text_bar(0.04) == "" and report.text_bar(1.7, width=4) == "████"


def test_model_table_shows_each_models_own_scores_and_the_mix(analysed):
    _, result = analysed
    table = report.model_table(result).set_index("class")
    for c in CLASSES:
        assert table.loc[c, "weights"].startswith(result.source[c])  # the carrying slot comes first
        for model, probs in result.per_model.items():
            assert table.loc[c, model] == probs[c]


def test_the_mix_is_written_largest_first_and_the_caption_names_the_prior_correction(analysed):
    _, result = analysed
    assert report.weights_text({"resnet18": 0.25, "resnet50": 0.75, "efficientnet": 0.0}) == "resnet50 75% · resnet18 25%"
    caption = report.combination_caption(result)
    assert ("power" in caption) == bool(result.prior_correction) and "renormalised" in caption


def test_measurement_table_uses_pixels_only(analysed):
    _, result = analysed
    table = report.measurement_table(result.lesion)
    text = " ".join(table["value"])
    assert f"{result.lesion['area_px']:,} px" in text and "mm" not in text
    assert str(result.lesion["colour_count"]) in table.set_index("measure").loc["Colours", "value"]


def test_a_markdown_table_keeps_every_cell_and_escapes_pipes():
    import pandas as pd

    frame = pd.DataFrame({"measure": ["Area", "odd | cell"], "value": ["12 px", "a\nb"]})
    lines = report.markdown_table(frame).splitlines()
    assert lines[:2] == ["| measure | value |", "|---|---|"]
    assert lines[2:] == ["| Area | 12 px |", "| odd \\| cell | a b |"]


def test_result_zip_holds_json_csv_mask_and_overlays(analysed):
    rgb, result = analysed
    outline = overlay_mask(rgb, result.mask)
    payload = report.result_zip(result, {"input": rgb, "mask_overlay": outline}, {"image": "x.jpg"})
    with zipfile.ZipFile(io.BytesIO(payload)) as archive:
        assert set(archive.namelist()) == {"result.json", "probabilities.csv", "mask.png", "input.png",
                                           "mask_overlay.png"}
        record = json.loads(archive.read("result.json"))
        mask = np.asarray(Image.open(io.BytesIO(archive.read("mask.png"))))
        overlay = np.asarray(Image.open(io.BytesIO(archive.read("mask_overlay.png"))).convert("RGB"))
    assert record["label"] == result.label and record["image"] == "x.jpg"
    assert record["probabilities"] == pytest.approx(result.probabilities)
    assert "not a diagnosis" in record["note"]
    assert np.array_equal(mask > 0, result.mask)
    assert np.array_equal(overlay, outline)  # colours survive the RGB -> PNG round trip


def test_metric_tables_follow_metrics_json(tiny_weights):
    metrics = json.loads((tiny_weights / "metrics.json").read_text())
    manifest = json.loads((tiny_weights / "manifest.json").read_text())
    summary = report.summary_table(metrics, "test")
    assert list(summary["model"]) == ["ensemble", "resnet18", "resnet50"]
    assert summary.set_index("model").loc["resnet50", "macro_f1"] == metrics["classifiers"]["test"]["resnet50"]["macro_f1"]
    per_class = report.per_class_table(metrics["classifiers"]["test"]["ensemble"])
    assert per_class["total"].sum() == metrics["classifiers"]["test"]["ensemble"]["n"]
    assert set(report.segmenter_table(metrics)["split"]) == {"val", "test"}
    models = report.models_table(manifest).set_index("model")
    assert set(models.index) == {"resnet18", "resnet18_2", "resnet50", "unet"}
    assert models.loc["resnet18_2", "slot"] == "resnet18" and models.loc["resnet50", "slot"] == "resnet50"
    routing = report.routing_table(manifest)
    for _, row in routing.iterrows():  # a class answered by the resnet18 slot is the mean of both ResNet18s
        assert row["networks"] == ("resnet18 + resnet18_2" if row["model"] == "resnet18" else "resnet50")
    assert routing["share"].sum() == pytest.approx(1.0)
    counts = report.split_counts_table(metrics)
    assert counts.loc["total"].sum() == sum(sum(split.values()) for split in metrics["split_counts"].values())
