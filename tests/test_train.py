import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from derm import runs
from derm.evaluate import evaluate_run
from derm.train import StopFlag, TrainConfig, epoch_indices, load_splits, train

from conftest import REPO, write_squashed_mask_set
from derm.data import TEST_SUBSET_DIR


def small_config(split, **overrides):
    """A tiny run on the shipped images, with their own split (see conftest.fixture_split)."""
    base = dict(epochs=1, limit=200, height=48, width=64, batch_size=32, data=str(TEST_SUBSET_DIR), split=str(split))
    base.update(overrides)
    return TrainConfig.for_task("classifier", "resnet18", **base)


@pytest.fixture()
def split_file(tmp_path, fixture_split):
    target = tmp_path / "split.csv"
    target.write_bytes(fixture_split.read_bytes())
    return target


def test_one_epoch_writes_the_run_files_and_evaluate_reads_them(tmp_path, split_file, data_dir):
    run_dir = train(small_config(split_file), tmp_path / "run", progress=False)
    assert runs.read_status(run_dir)["state"] == "finished"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["arch"] == "resnet18" and len(config["normalization"]["mean"]) == 3
    (record,) = runs.read_metrics(run_dir)
    assert {"epoch", "train_loss", "val_loss", "balanced_accuracy", "macro_f1", "seconds", "images_per_s"} <= set(record)
    assert (run_dir / "last.pt").is_file() and (run_dir / "best.pt").is_file()
    report = evaluate_run(run_dir, "test", limit=64)
    assert report["n"] == 64 and 0 <= report["balanced_accuracy"] <= 1
    predictions = pd.read_csv(run_dir / "eval" / "predictions.csv")
    assert len(predictions) == 64 and {"image_id", "true", "pred", "MEL"} <= set(predictions.columns)


class StopAfterEpochs(StopFlag):
    """Requests a stop once the run has logged `n` epochs (deterministic stand-in for SIGTERM)."""

    def __init__(self, run_dir, n):
        self.run_dir, self.n = run_dir, n

    @property
    def requested(self):
        return len(runs.read_metrics(self.run_dir)) >= self.n


def test_resume_continues_from_the_saved_epoch(tmp_path, split_file, data_dir):
    run_dir = tmp_path / "run"
    train(small_config(split_file, epochs=3, limit=96), run_dir, progress=False, stop=StopAfterEpochs(run_dir, 1))
    status = runs.read_status(run_dir)
    assert status["state"] == "stopped" and status["epoch"] == 1
    assert torch.load(run_dir / "last.pt", weights_only=False)["epoch"] == 1
    train(None, run_dir, resume=True, progress=False, stop=StopAfterEpochs(run_dir, 99))
    assert [m["epoch"] for m in runs.read_metrics(run_dir)] == [1, 2, 3]
    assert runs.read_status(run_dir)["state"] == "finished"


def test_init_warm_starts_from_a_finished_run_with_a_fresh_schedule(tmp_path, split_file, data_dir):
    # source and warm start from different seeds: were --init ignored, warm would equal cold exactly
    source = train(small_config(split_file, limit=64, seed=1), tmp_path / "source", progress=False)
    source_state = torch.load(source / "best.pt", weights_only=False)
    warm = train(small_config(split_file, limit=64, lr=1e-6, init=str(source)), tmp_path / "warm", progress=False)
    cold = train(small_config(split_file, limit=64, lr=1e-6), tmp_path / "cold", progress=False)
    key = "conv1.weight"
    start = source_state["model"][key]
    warm_w = torch.load(warm / "best.pt", weights_only=False)["model"][key]
    cold_w = torch.load(cold / "best.pt", weights_only=False)["model"][key]
    assert (warm_w - start).abs().max() < 1e-3 < (cold_w - start).abs().max()
    config = json.loads((warm / "config.json").read_text())
    assert config["init"] == str(source) and config["normalization"] == source_state["config"]["normalization"]
    assert [m["epoch"] for m in runs.read_metrics(warm)] == [1]  # its own history, not the source's


def test_init_from_another_architecture_is_refused(tmp_path, split_file, data_dir):
    source = train(small_config(split_file, limit=64), tmp_path / "source", progress=False)
    config = TrainConfig.for_task("classifier", "resnet50", epochs=1, limit=64, height=48, width=64,
                                  data=str(data_dir), split=str(split_file), init=str(source))
    with pytest.raises(ValueError, match="arch"):
        train(config, tmp_path / "bad", progress=False)
    assert runs.read_status(tmp_path / "bad")["state"] == "failed"
    other_colour = dataclasses.replace(config, arch="resnet18", colour="shades_of_gray")
    with pytest.raises(ValueError, match="colour='none'"):  # the source ran without colour constancy
        train(other_colour, tmp_path / "bad-colour", progress=False)


def test_sigterm_stops_cleanly_and_keeps_the_checkpoint(tmp_path, split_file, data_dir):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "derm", "train", "classifier", "--epochs", "50", "--limit", "64", "--height", "48",
           "--width", "64", "--batch-size", "16", "--data", str(data_dir), "--split", str(split_file),
           "--run-dir", str(run_dir)]
    process = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180
        while not runs.read_metrics(run_dir) and time.time() < deadline:
            time.sleep(0.2)
        assert runs.read_metrics(run_dir), "no epoch finished in time"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
    status = runs.read_status(run_dir)
    assert status["state"] == "stopped"
    saved = torch.load(run_dir / "last.pt", weights_only=False)["epoch"]
    assert saved == status["epoch"] >= 1


def test_crash_is_recorded_as_failed(tmp_path, split_file, data_dir, monkeypatch):
    import derm.train as train_module

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(train_module, "validate", broken)
    with pytest.raises(RuntimeError):
        train(small_config(split_file, limit=32), tmp_path / "run", progress=False)
    status = runs.read_status(tmp_path / "run")
    assert status["state"] == "failed" and "disk on fire" in status["error"]


def test_out_of_range_config_is_rejected_with_a_message():
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig.for_task("classifier", "resnet18", epochs=0).validate()
    with pytest.raises(ValueError, match="sampling"):
        TrainConfig.for_task("classifier", "resnet18", sampling="magic").validate()
    with pytest.raises(ValueError, match="encoder must be one of"):
        TrainConfig.for_task("segmenter", encoder="lite9").validate()
    with pytest.raises(ValueError, match="pretrained encoder is for the segmenter"):
        TrainConfig.for_task("classifier", "resnet18", encoder="lite0").validate()


def test_a_lite_unet_warm_start_keeps_its_encoder_and_refuses_another():
    from derm.train import check_init_matches

    config = TrainConfig.for_task("segmenter", encoder="lite0")
    check_init_matches(config, {"task": "segmenter", "arch": "unet", "encoder": "lite0"})
    with pytest.raises(ValueError, match="--encoder none"):
        check_init_matches(config, {"task": "segmenter", "arch": "unet", "encoder": "none"})
    assert "--encoder" in config.cli_args(only_changed=True) and config.cli_args()[-2:] != ["--encoder", "none"]


def test_sampling_policies_shape_the_class_mix():
    labels = torch.tensor([0] * 900 + [1] * 100)
    gen = torch.Generator().manual_seed(0)
    balanced = epoch_indices(labels, "balanced", 10000, gen)
    assert abs((labels[balanced] == 1).float().mean() - 0.5) < 0.03
    sqrt = epoch_indices(labels, "sqrt", 10000, gen)
    assert abs((labels[sqrt] == 1).float().mean() - 0.25) < 0.03  # sqrt(100) / (sqrt(900) + sqrt(100))
    reference = epoch_indices(labels, "reference", 0, gen)
    assert len(reference) == 1800 and (labels[reference] == 1).sum() == 900
    natural = epoch_indices(labels, "natural", 0, gen)
    assert sorted(natural.tolist()) == list(range(1000))


@pytest.fixture()
def extra_mask_folder(tmp_path, data_dir):
    """A second mask source in isic2018_task1's layout (images/, masks/, split.csv), 256x256 like it."""
    folder = tmp_path / "extra"
    ids = sorted(p.stem for p in (data_dir / "images").glob("*.jpg"))[:9]
    write_squashed_mask_set(data_dir, folder, ids, prefix="x")
    pd.DataFrame({"image_id": [f"x{i}" for i in ids], "split": ["train"] * 5 + ["val"] * 3 + ["test"]}).to_csv(
        folder / "split.csv", index=False)
    return folder


def test_extra_masks_join_training_and_validation_and_each_source_is_scored(tmp_path, split_file, data_dir,
                                                                           extra_mask_folder):
    config = TrainConfig.for_task("segmenter", epochs=1, limit=16, height=48, width=64, batch_size=8, unet_width=8,
                                  sampling="balanced", extra_masks=str(extra_mask_folder),
                                  data=str(TEST_SUBSET_DIR), split=str(split_file))
    splits, _ = load_splits(config)
    assert splits["train"].labels.tolist() == [0] * 16 + [1] * 5  # source labels: HAM10000, then the extra folder
    rows = pd.read_csv(extra_mask_folder / "split.csv")
    assert splits["val"].image_ids[-3:] == rows.loc[rows["split"] == "val", "image_id"].tolist()
    assert splits["val"].labels.tolist()[-4:] == [0, 1, 1, 1]
    assert not set(splits["train"].image_ids) & set(splits["val"].image_ids)  # its test row joins neither
    run_dir = train(config, tmp_path / "run", progress=False)
    (record,) = runs.read_metrics(run_dir)
    assert record["score"] == pytest.approx((record["dice_ham10000"] + record["dice_extra"]) / 2)
    assert json.loads((run_dir / "config.json").read_text())["extra_masks"] == str(extra_mask_folder)


def test_extra_masks_are_refused_for_a_classifier_or_a_folder_without_split_csv(tmp_path):
    with pytest.raises(ValueError, match="extra"):
        TrainConfig.for_task("classifier", "resnet18", extra_masks=str(tmp_path)).validate()
    with pytest.raises(ValueError, match="split.csv"):
        TrainConfig.for_task("segmenter", extra_masks=str(tmp_path)).validate()
