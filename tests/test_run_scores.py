"""score-runs: runs (and shipped networks) scored alone and averaged on HAM10000 val and another set's
choosing splits, by the same softmax the evaluation uses; the other set's test split is refused."""

import numpy as np
import pandas as pd
import pytest

from derm import cli
from derm.evaluate import classifier_probabilities
from derm.metrics import present_classes_report
from derm.run_scores import ExternalSet, checkpoint_classifier, external_images, ham_val_images, score_runs


@pytest.fixture(scope="module")
def other_set(tmp_path_factory, data_dir, fixture_split):
    """A derm7pt-style set: 16 shipped images under new ids, no AKIEC, train/valid/test splits."""
    folder = tmp_path_factory.mktemp("atlas")
    (folder / "images").mkdir()
    table = pd.read_csv(fixture_split).query("split == 'test'").head(16)
    meta = pd.read_csv(data_dir / "HAM10000_metadata.csv").set_index("image_id")
    rows = []
    for k, image_id in enumerate(table["image_id"]):
        dx = str(meta.loc[image_id, "dx"]).upper()
        dx = "BKL" if dx == "AKIEC" else dx
        (folder / "images" / f"case{k:04d}.jpg").write_bytes((data_dir / "images" / f"{image_id}.jpg").read_bytes())
        rows.append({"image_id": f"case{k:04d}", "dx": dx.lower(), "split": ["train", "valid", "test"][k % 3]})
    pd.DataFrame(rows).to_csv(folder / "labels.csv", index=False)
    return ExternalSet(folder / "images", folder / "labels.csv")


def test_each_run_and_the_average_are_scored_by_their_own_softmax(tiny_runs, other_set):
    runs = [str(tiny_runs["resnet18"]), str(tiny_runs["resnet18_plain"])]
    scores = score_runs(runs, other_set)
    assert set(scores) == {tiny_runs["resnet18"].name, tiny_runs["resnet18_plain"].name, "average"}
    images, labels = ham_val_images(checkpoint_classifier(runs[0])[1])
    outside, outside_labels = external_images(other_set)
    assert len(outside) == len(outside_labels) == 11  # train + valid of 16: the test third stays out
    probs = {r: classifier_probabilities(checkpoint_classifier(r)[0], images) for r in runs}
    for run in runs:
        expected = present_classes_report(labels, probs[run])
        got = scores[tiny_runs["resnet18"].name if run == runs[0] else tiny_runs["resnet18_plain"].name]
        assert got["ham_val"]["balanced_accuracy"] == pytest.approx(expected["balanced_accuracy"])
        assert got["ham_val"]["macro_auc_renormalised"] == pytest.approx(expected["macro_auc_renormalised"])
    mean = present_classes_report(labels, np.mean([probs[r] for r in runs], axis=0))
    assert scores["average"]["ham_val"]["macro_auc_renormalised"] == pytest.approx(mean["macro_auc_renormalised"])
    assert set(scores["average"]["external"]) == {"balanced_accuracy", "macro_f1", "macro_auc_renormalised",
                                                  "melanoma_auc", "accuracy"}


def test_a_shipped_network_scores_like_the_run_it_was_exported_from(tiny_runs, tiny_weights, data_dir, monkeypatch):
    monkeypatch.setenv("DERM_DATA", str(data_dir))  # shipped weights name no data folder: the default one is used
    shipped = score_runs([str(tiny_weights / "resnet50.safetensors")])["resnet50.safetensors"]["ham_val"]
    run = score_runs([str(tiny_runs["resnet50"])])[tiny_runs["resnet50"].name]["ham_val"]
    assert shipped["macro_auc_renormalised"] == pytest.approx(run["macro_auc_renormalised"], abs=0.02)  # fp16 vs fp32


def test_the_other_sets_test_split_chooses_nothing(tiny_runs, other_set):
    with pytest.raises(ValueError, match="test split chooses nothing"):
        score_runs([str(tiny_runs["resnet18"])], ExternalSet(other_set.images, other_set.labels, ["valid", "test"]))


def test_the_cli_prints_scores_and_refuses_bad_input(tiny_runs, other_set, tmp_path, capsys):
    out = tmp_path / "scores.json"
    assert cli.main(["score-runs", str(tiny_runs["resnet18"]), "--images", str(other_set.images), "--labels",
                     str(other_set.labels), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ham_val" in printed and "external" in printed and out.is_file()
    assert cli.main(["score-runs", str(tmp_path / "nothing")]) == 2
    assert "no best.pt" in capsys.readouterr().err
    assert cli.main(["score-runs", str(tiny_runs["unet"])]) == 2
    assert "not a classifier" in capsys.readouterr().err
    assert cli.main(["score-runs", str(tiny_runs["resnet18"]), "--images", str(other_set.images)]) == 2
