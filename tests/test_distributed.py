"""torchrun data parallelism: 2 real processes (gloo on CPU) train like 1 process on the same global batch."""

import subprocess
import sys

import pytest

from derm import runs
from conftest import REPO

ARGS = ["train", "classifier", "--epochs", "1", "--limit", "96", "--height", "48", "--width", "64",
        "--batch-size", "16", "--augment", "none", "--sampling", "natural", "--lr", "1e-3", "--seed", "3"]
# per-process BatchNorm statistics (8 images instead of 16) are the one intended difference
LOSS_TOLERANCE = 0.03  # relative, on the mean training loss over the epoch's 6 steps


def train_with(launcher: list[str], run_dir, data_dir, split) -> dict:
    done = subprocess.run([*launcher, *ARGS, "--data", str(data_dir), "--split", str(split), "--run-dir", str(run_dir)],
                          cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert runs.read_status(run_dir)["state"] == "finished"
    (record,) = runs.read_metrics(run_dir)
    return record


def test_two_processes_match_one_on_the_same_global_batch(tmp_path, data_dir, fixture_split):
    split = tmp_path / "split.csv"
    split.write_bytes(fixture_split.read_bytes())
    single = train_with([sys.executable, "-m", "derm"], tmp_path / "single", data_dir, split)
    double = train_with([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                         "-m", "derm"], tmp_path / "double", data_dir, split)
    assert double["processes"] == 2 and single["processes"] == 1
    assert double["images"] == single["images"] == 96  # each image once per epoch: the shares are disjoint
    assert double["train_loss"] == pytest.approx(single["train_loss"], rel=LOSS_TOLERANCE)
    # only the main process wrote files: one metrics line, one checkpoint pair
    assert sorted(p.name for p in (tmp_path / "double").glob("*.pt")) == ["best.pt", "last.pt"]
