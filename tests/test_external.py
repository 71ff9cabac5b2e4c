"""`python -m derm evaluate-set`: any labelled folder through the app's own pipeline."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score, recall_score

from conftest import write_squashed_mask_set
from derm.classes import CLASSES
from derm.cli import main
from derm.metrics import classification_report, present_classes_report


def test_macro_metrics_average_over_the_classes_present_only():
    # three classes present (BCC, MEL, NV); the models may still answer AKIEC, which no image has
    y = np.array([1, 1, 4, 4, 4, 5, 5, 5, 5, 5])
    pred = np.array([1, 0, 4, 4, 5, 5, 5, 5, 0, 4])
    probs = np.full((len(y), len(CLASSES)), 0.02)
    probs[np.arange(len(y)), pred] = 0.9
    probs[:, 4] += np.array([0, 0, .05, .05, .04, 0, 0, 0, 0, .06])  # melanoma scores for the AUC
    report = present_classes_report(y, probs)
    assert report["classes_present"] == ["BCC", "MEL", "NV"]
    assert report["macro_f1"] == pytest.approx(f1_score(y, pred, labels=[1, 4, 5], average="macro"))
    assert report["balanced_accuracy"] == pytest.approx((1 / 2 + 2 / 3 + 3 / 5) / 3)
    assert report["recall"] == pytest.approx({"BCC": 0.5, "MEL": 2 / 3, "NV": 0.6})
    # over all 7 labels the absent classes would drag macro F1 down: the two must differ here
    assert report["macro_f1"] > classification_report(y, probs)["macro_f1"] + 0.1
    assert report["melanoma_auc"] == report["per_class"]["MEL"]["auc"] is not None
    assert report["per_class"]["AKIEC"]["auc"] is None


@pytest.fixture(scope="module")
def labelled_folder(tmp_path_factory, data_dir):
    """Twelve real images of three classes under other names, labelled in lower case as derm7pt is."""
    table = pd.read_csv(data_dir / "HAM10000_metadata.csv")
    picked = pd.concat([table[table["dx"] == dx].head(4) for dx in ("bkl", "mel", "nv")])
    folder = tmp_path_factory.mktemp("external")
    (folder / "images").mkdir()
    rows = []
    for k, (_, row) in enumerate(picked.iterrows()):
        image_id = f"case{k:04d}"
        shutil.copyfile(data_dir / "images" / f"{row['image_id']}.jpg", folder / "images" / f"{image_id}.jpg")
        rows.append({"image_id": image_id, "dx": row["dx"], "split": "test" if k % 2 else "train",
                     "source": row["image_id"]})
    pd.DataFrame(rows).to_csv(folder / "labels.csv", index=False)
    return folder


def test_evaluate_set_scores_each_model_over_the_classes_present(tiny_weights, labelled_folder, tmp_path):
    out = tmp_path / "external.json"
    out.write_text(json.dumps({"another_set": {"kept": True}}))
    code = main(["evaluate-set", "--images", str(labelled_folder / "images"), "--labels",
                 str(labelled_folder / "labels.csv"), "--weights", str(tiny_weights), "--out", str(out),
                 "--name", "mine", "--predictions", str(tmp_path / "pred.csv")])
    assert code == 0
    content = json.loads(out.read_text())
    assert content["another_set"] == {"kept": True}  # --name merges, keeping the other sets
    entry = content["mine"]
    assert entry["command"].startswith("python -m derm evaluate-set --images ")
    models = entry["classification"]["models"]
    assert set(models) == {"ensemble", "resnet18", "resnet50"}  # the slots the app shows
    assert set(entry["classification"]["members"]) == {"resnet18", "resnet18_2", "resnet50"}  # each network alone
    frame = pd.read_csv(tmp_path / "pred.csv")
    assert len(frame) == 12 and set(frame["true"]) == {"BKL", "MEL", "NV"}
    for name, rep in models.items():
        assert rep["classes_present"] == ["BKL", "MEL", "NV"] and rep["n"] == 12
        assert set(rep["recall"]) == {"BKL", "MEL", "NV"}
        assert rep["macro_f1"] == pytest.approx(f1_score(frame["true"], frame[f"{name}_pred"],
                                                         labels=["BKL", "MEL", "NV"], average="macro"))
        assert rep["balanced_accuracy"] == pytest.approx(recall_score(frame["true"], frame[f"{name}_pred"],
                                                                      labels=["BKL", "MEL", "NV"], average="macro"))
        probs = frame[[f"{name}_{c}" for c in CLASSES]].to_numpy()
        assert np.allclose(probs.sum(1), 1, atol=1e-4)  # still probabilities over all 7 classes
    member = {n: frame[[f"member_{n}_{c}" for c in CLASSES]].to_numpy() for n in ("resnet18", "resnet18_2", "resnet50")}
    slot18 = frame[[f"resnet18_{c}" for c in CLASSES]].to_numpy()  # each network's columns, so other combinations can be scored
    assert np.allclose(slot18, (member["resnet18"] + member["resnet18_2"]) / 2, atol=1e-5)
    assert np.allclose(frame[[f"resnet50_{c}" for c in CLASSES]].to_numpy(), member["resnet50"], atol=1e-5)
    assert not np.allclose(member["resnet18"], member["resnet18_2"], atol=1e-3)


def test_evaluate_set_matches_the_app_on_each_image(tiny_weights, labelled_folder, tmp_path):
    from derm.imageio import load_image
    from derm.pipeline import Predictor

    main(["evaluate-set", "--images", str(labelled_folder / "images"), "--labels", str(labelled_folder / "labels.csv"),
          "--split", "test", "--weights", str(tiny_weights), "--predictions", str(tmp_path / "pred.csv")])
    frame = pd.read_csv(tmp_path / "pred.csv")
    assert len(frame) == 6  # --split keeps the rows of that split only
    predictor = Predictor(tiny_weights)
    row = frame.iloc[0]
    result = predictor.analyse(load_image(labelled_folder / "images" / f"{row['image_id']}.jpg"))
    assert [round(result.probabilities[c], 4) for c in CLASSES] == \
        pytest.approx([row[f"ensemble_{c}"] for c in CLASSES], abs=2e-4)


@pytest.fixture(scope="module")
def mask_folder(tmp_path_factory, data_dir):
    """Five real images and masks squashed to 256x256 like isic2018_task1's copies, and one image without a mask."""
    folder = tmp_path_factory.mktemp("masks")
    ids = sorted(p.stem for p in (data_dir / "images").glob("*.jpg"))[:5]
    write_squashed_mask_set(data_dir, folder, ids)
    shutil.copyfile(data_dir / "images" / f"{ids[0]}.jpg", folder / "images" / "no_mask.jpg")
    return folder


def test_evaluate_set_scores_masks_at_their_own_size_with_and_without_cleaning(tiny_weights, mask_folder, tmp_path):
    out = tmp_path / "seg.json"
    code = main(["evaluate-set", "--images", str(mask_folder / "images"), "--masks", str(mask_folder / "masks"),
                 "--weights", str(tiny_weights), "--out", str(out), "--predictions", str(tmp_path / "seg.csv")])
    assert code == 1  # one image had no mask: said, not silently dropped
    seg = json.loads(out.read_text())["segmentation"]
    assert seg["n"] == 5 and any("no_mask" in s for s in seg["skipped"])
    assert seg["cleaning"] == json.loads((tiny_weights / "manifest.json").read_text())["models"]["unet"]["cleaning"]
    frame = pd.read_csv(tmp_path / "seg.csv")
    for name in ("raw", "cleaned"):
        assert 0 <= seg[name]["dice"] <= 1
        assert seg[name]["dice"] == pytest.approx(frame[f"{name}_dice"].mean(), abs=1e-5)
        assert seg[name]["thresholded_jaccard"] <= seg[name]["iou"] + 1e-9


def test_evaluate_set_refuses_labels_it_cannot_use(tiny_weights, labelled_folder, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("image_id,dx\ncase0000,melanoma\n")
    assert main(["evaluate-set", "--images", str(labelled_folder / "images"), "--labels", str(bad),
                 "--weights", str(tiny_weights)]) == 2
    assert "not HAM10000 classes" in capsys.readouterr().err
    no_dx = tmp_path / "ids.csv"
    no_dx.write_text("image_id\ncase0000\n")
    assert main(["evaluate-set", "--images", str(labelled_folder / "images"), "--labels", str(no_dx),
                 "--weights", str(tiny_weights)]) == 2


def test_model_card_shows_other_sources_from_external_json(tiny_weights, labelled_folder, mask_folder, tmp_path):
    from derm.modelcard import EXTERNAL_TITLES, headline_table, render

    weights = tmp_path / "weights"
    shutil.copytree(tiny_weights, weights)
    main(["evaluate-set", "--images", str(labelled_folder / "images"), "--labels", str(labelled_folder / "labels.csv"),
          "--weights", str(weights), "--out", str(weights / "external.json"), "--name", "derm7pt"])
    assert "## Images from other sources" not in render(tiny_weights)  # no external.json: no section
    card = render(weights)
    entry = json.loads((weights / "external.json").read_text())["derm7pt"]
    ens = entry["classification"]["models"]["ensemble"]
    assert "## Images from other sources" in card and entry["command"] in card  # the command that reproduces it
    assert f"| derm7pt | ensemble | 12 | {ens['balanced_accuracy']:.3f} | {ens['macro_f1']:.3f} | {ens['macro_auc']:.3f} |" in card
    assert f"| {EXTERNAL_TITLES['derm7pt']} | 12 | diagnosis, " in card  # and in the headline table
    main(["evaluate-set", "--images", str(mask_folder / "images"), "--masks", str(mask_folder / "masks"),
          "--weights", str(weights), "--out", str(weights / "external.json"), "--name", "isic2018_task1_test"])
    seg = json.loads((weights / "external.json").read_text())["isic2018_task1_test"]["segmentation"]
    table = headline_table(weights)
    row = table[table["evaluation set"] == EXTERNAL_TITLES["isic2018_task1_test"]]
    assert row["images"].item() == 5 and row["result"].item().startswith(f"Dice {seg['cleaned']['dice']:.3f}, ")
    assert f"Dice {seg['raw']['dice']:.3f} thresholded only, {seg['cleaned']['dice']:.3f} cleaned" in render(weights)
    main(["evaluate-set", "--images", str(labelled_folder / "images"), "--labels", str(labelled_folder / "labels.csv"),
          "--weights", str(weights), "--out", str(weights / "external.json"), "--name", "derm7pt_test"])
    sets = list(headline_table(weights)["evaluation set"])  # written last, shown right after the whole set it belongs to
    assert sets.index(EXTERNAL_TITLES["derm7pt"]) < sets.index(EXTERNAL_TITLES["derm7pt_test"]) \
        < sets.index(EXTERNAL_TITLES["isic2018_task1_test"])
