import dataclasses
import json
import os
import time

import pytest

from derm import jobs, runs
from derm.cli import build_parser
from derm.train import CLI_FIELDS, TrainConfig


@pytest.mark.parametrize("config", [
    TrainConfig.for_task("classifier", "resnet50", epochs=3, lr=3e-4, batch_size=24, height=96, width=128,
                         sampling="balanced", augment="flips", limit=32),
    TrainConfig.for_task("segmenter", precision="fp32", unet_width=16, init="runs/earlier-unet"),
])
def test_train_args_rebuild_the_config_through_the_cli(config):
    args = build_parser().parse_args(["train", *config.cli_args()])
    assert args.task == config.task and args.fp32 == (config.precision == "fp32")
    if config.task == "classifier":
        assert args.arch == config.arch
    for name in CLI_FIELDS:
        assert getattr(args, name) == getattr(config, name), name


@pytest.mark.parametrize("text, expected", [("my run", "my-run"), ("../../etc", "etc"), ("", "resnet18"),
                                            ("  ", "resnet18"), ("lr=1e-3;rm -rf", "lr-1e-3-rm-rf")])
def test_run_names_are_folder_safe(text, expected):
    assert jobs.run_name(text, TrainConfig()) == expected


def test_eta_from_seconds_per_epoch():
    records = [{"epoch": 1, "seconds": 10.0}, {"epoch": 2, "seconds": 20.0}]
    assert jobs.eta_seconds({"state": "running", "epoch": 2, "epochs": 5}, records) == pytest.approx(45.0)
    assert jobs.eta_seconds({"state": "running", "epoch": 0, "epochs": 5}, []) is None
    assert jobs.eta_seconds({"state": "finished", "epoch": 5, "epochs": 5}, records) is None


def fake_run(root, name: str, task: str, state: str, records: list[dict], best_epoch: int | None = None):
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"task": task, "arch": "unet" if task == "segmenter" else "resnet18",
                                                     "epochs": 4, "limit": 0}))
    runs.write_status(run_dir, state, epoch=len(records), epochs=4, best_epoch=best_epoch, best_score=0.5)
    for record in records:
        runs.append_metrics(run_dir, record)
    return run_dir


def test_runs_table_shows_best_epoch_metrics(tmp_path):
    fake_run(tmp_path, "20260101-000000-a", "classifier", "finished",
             [{"epoch": 1, "balanced_accuracy": 0.4, "seconds": 60, "images_per_s": 50},
              {"epoch": 2, "balanced_accuracy": 0.6, "seconds": 60, "images_per_s": 55}], best_epoch=2)
    fake_run(tmp_path, "20260102-000000-b", "segmenter", "stopped", [{"epoch": 1, "dice": 0.7, "seconds": 30}], 1)
    table = jobs.runs_table(runs.list_runs(tmp_path)).set_index("run")
    assert list(table.index) == ["20260102-000000-b", "20260101-000000-a"]  # newest first
    assert table.loc["20260101-000000-a", "balanced_accuracy"] == 0.6
    assert table.loc["20260101-000000-a", "train minutes"] == 2.0
    assert table.loc["20260102-000000-b", "dice"] == 0.7 and table.loc["20260102-000000-b", "epoch"] == "1/4"


def test_only_finished_runs_with_a_checkpoint_are_promotable(tmp_path):
    done = fake_run(tmp_path, "r1", "classifier", "finished", [], 1)
    (done / "best.pt").write_bytes(b"x")
    fake_run(tmp_path, "r2", "classifier", "finished", [], 1)  # no checkpoint
    fake_run(tmp_path, "r3", "segmenter", "finished", [], 1)
    assert [r["id"] for r in jobs.promotable(runs.list_runs(tmp_path), "classifier")] == ["r1"]
    with pytest.raises(ValueError, match="r2"):
        jobs.promote([done, tmp_path / "r2"])
    with pytest.raises(ValueError, match="at least one"):
        jobs.promote([])


def test_promotion_folders_are_new_and_names_unique(tmp_path):
    a = fake_run(tmp_path, "a", "classifier", "finished", [])
    b = fake_run(tmp_path, "b", "classifier", "finished", [])
    assert jobs.model_names([a, b]) == ["resnet18", "resnet18_2"]
    assert jobs.new_weights_dir(a) == a / "weights"
    (a / "weights").mkdir()
    assert jobs.new_weights_dir(a) == a / "weights-2"


def test_log_tail_and_curve_columns(tmp_path):
    (tmp_path / "log.txt").write_text("\n".join(f"line {i}" for i in range(50)))
    assert jobs.log_tail(tmp_path, 3) == "line 47\nline 48\nline 49"
    assert jobs.curve_columns([{"epoch": 1, "train_loss": 1, "val_loss": 2, "dice": 0.5, "iou": 0.4}]) == \
        (["train_loss", "val_loss"], ["dice", "iou"])


def test_a_run_still_starting_up_counts_as_busy(tmp_path):
    """launch() writes status.json at once, config.json comes later from the child: no double launch."""
    starting = tmp_path / "20260101-000000-starting"
    starting.mkdir()
    runs.write_status(starting, "queued", pid=os.getpid())
    assert runs.active_run(tmp_path)["id"] == starting.name
    with pytest.raises(runs.RunBusyError):
        runs.launch(["classifier"], "second", root=tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [starting.name]


def test_a_launched_run_shows_its_config_and_one_state_at_once(tmp_path, data_dir, fixture_split):
    """The runs table right after launch: what it trains and "running", as its progress says."""
    config = TrainConfig.for_task("classifier", "resnet18", epochs=1, limit=16, height=48, width=64, batch_size=8,
                                  data=str(data_dir), split=str(fixture_split))
    run_dir = runs.launch(config.cli_args(), "fresh", root=tmp_path, config=dataclasses.asdict(config))
    try:
        row = jobs.runs_table(runs.list_runs(tmp_path)).set_index("run").loc[run_dir.name]
        assert (row["task"], row["arch"], row["input"], row["epoch"]) == ("classifier", "resnet18", "48x64", "0/1")
        assert row["state"] == runs.read_status(run_dir)["state"] == "running"
    finally:
        runs.stop(run_dir)
        deadline = time.monotonic() + 120
        while runs.pid_alive(runs.read_json(run_dir / "status.json").get("pid")) and time.monotonic() < deadline:
            time.sleep(0.5)
    assert not runs.pid_alive(runs.read_json(run_dir / "status.json").get("pid"))
