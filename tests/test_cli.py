import csv
import io
import json
import os
import subprocess
import sys

import cv2
import numpy as np

from derm.classes import CLASSES
from conftest import REPO


def run_cli(*args, env: dict | None = None):
    return subprocess.run([sys.executable, "-m", "derm", *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


def test_predict_prints_probabilities_and_reports_a_corrupt_file(tiny_weights, original_image, tmp_path):
    corrupt = tmp_path / "broken.jpg"
    corrupt.write_bytes(original_image.read_bytes()[:2000])
    not_image = tmp_path / "notes.txt"
    not_image.write_text("hello")
    done = run_cli("predict", original_image, corrupt, not_image, "--weights", tiny_weights)
    assert done.returncode == 1  # something failed ...
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert len(rows) == 1  # ... but the good image was still processed
    assert abs(sum(float(rows[0][c]) for c in CLASSES) - 1) < 1e-3 and rows[0]["label"] in CLASSES
    errors = done.stderr.strip().splitlines()
    assert any("broken.jpg" in line and "truncated or corrupt" in line for line in errors)
    assert any("notes.txt" in line and "not an image" in line for line in errors)
    assert "Traceback" not in done.stderr


def test_predict_json(tiny_weights, original_image):
    done = run_cli("predict", original_image, "--format", "json", "--weights", tiny_weights)
    assert done.returncode == 0
    (row,) = json.loads(done.stdout)
    assert set(CLASSES) <= set(row) and row["label"] == max(CLASSES, key=lambda c: row[c])


def test_segment_writes_a_binary_mask_at_the_input_size(tiny_weights, original_image, tmp_path):
    done = run_cli("segment", original_image, "--out", tmp_path / "masks", "--weights", tiny_weights)
    assert done.returncode == 0, done.stderr
    mask = cv2.imread(str(tmp_path / "masks" / f"{original_image.stem}_mask.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (450, 600) and set(np.unique(mask)) <= {0, 255}


def test_missing_weights_is_one_clear_line(tmp_path, original_image):
    done = run_cli("predict", original_image, "--weights", tmp_path)
    assert done.returncode == 2 and "manifest.json" in done.stderr and "Traceback" not in done.stderr


def test_every_command_has_help():
    for command in ("train", "evaluate", "export", "predict", "segment", "card", "runs"):
        assert run_cli(command, "--help").returncode == 0


def test_runs_lists_each_run_with_its_settings_and_best_validation_numbers(tiny_runs, tmp_path):
    root = next(iter(tiny_runs.values())).parent
    result = run_cli("runs", "--runs", root, "--format", "csv")
    assert result.returncode == 0, result.stderr
    rows = {r["run"]: r for r in csv.DictReader(io.StringIO(result.stdout))}
    assert set(tiny_runs) <= set(rows)
    assert rows["resnet18"]["input"] == "48x64" and rows["resnet18"]["sampling"] == "sqrt"
    assert 0 <= float(rows["resnet18"]["balanced_accuracy"]) <= 1 and 0 <= float(rows["unet"]["dice"]) <= 1
    empty = run_cli("runs", "--runs", tmp_path)
    assert empty.returncode == 1 and "no runs" in empty.stderr


def test_train_refuses_shipped_weights_of_another_architecture_in_one_line(tiny_weights):
    result = run_cli("train", "classifier", "--arch", "resnet18", "--epochs", "1", "--limit", "8",
                     "--init", tiny_weights / "resnet50.safetensors")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "arch='resnet50'" in result.stderr


def test_export_val_only_never_scores_the_test_split(tiny_weights, tmp_path, data_dir):
    out = tmp_path / "candidate"
    done = run_cli("export", "--val-only", "--resnet18", tiny_weights / "resnet18.safetensors",
                   "--resnet50", tiny_weights / "resnet50.safetensors", "--out", out, "--limit", "32",
                   env={"DERM_DATA": str(data_dir)})  # shipped weights name no data folder: the default one is used
    assert done.returncode == 0, done.stderr
    assert "val   ensemble" in done.stdout and "test" not in done.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["classifiers"]) == ["val"] and not (out / "test_predictions.csv").exists()
    assert json.loads((out / "manifest.json").read_text())["ensemble"]["routing"]  # the choices are still made
    card = run_cli("card", "--weights", out, "--out", tmp_path / "card.md")
    assert card.returncode == 2 and "--val-only" in card.stderr and "Traceback" not in card.stderr
