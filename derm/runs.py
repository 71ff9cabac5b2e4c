"""Training runs as folders of files: the contract between `derm train`, `derm evaluate` and the app.

runs/<id>/
  config.json      the TrainConfig the run was started with
  status.json      {"state": queued|running|finished|failed|stopped, "pid", "epoch", "epochs",
                    "best_score", "best_epoch", "error", "updated"}
  metrics.jsonl    one JSON object per finished epoch: epoch, train_loss, val_loss, val metrics,
                   seconds, images_per_s, lr
  last.pt          checkpoint after the last finished epoch (resume from it)
  best.pt          checkpoint of the best epoch by the validation selection metric
  log.txt          stdout/stderr of a run started in the background
  init_training.json  a run warm-started from shipped weights: their manifest's training record
  eval/            metrics.json and predictions.csv written by `derm evaluate`

Every file is written atomically (temp file + rename), so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from derm.data import REPO_ROOT

STATES = ("queued", "running", "finished", "failed", "stopped")
ACTIVE_STATES = ("queued", "running")
RUNS_ENV = "DERM_RUNS"
INIT_TRAINING_FILE = "init_training.json"


def runs_root() -> Path:
    return Path(os.environ.get(RUNS_ENV, REPO_ROOT / "runs")).expanduser()


def write_json_atomic(path: Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def new_run_dir(name: str, root: Path | None = None) -> Path:
    """runs/<YYYYmmdd-HHMMSS>-<name>, unique even when two runs start in the same second."""
    root = root or runs_root()
    root.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for suffix in [""] + [f"-{i}" for i in range(1, 100)]:
        path = root / f"{stamp}-{name}{suffix}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a run folder in {root}")


def write_status(run_dir: Path, state: str, **fields) -> dict:
    if state not in STATES:
        raise ValueError(f"unknown state {state!r}")
    status = read_json(run_dir / "status.json")
    status.update(fields, state=state, updated=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    write_json_atomic(run_dir / "status.json", status)
    return status


def append_metrics(run_dir: Path, record: dict) -> None:
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line being written right now
    return records


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def read_status(run_dir: Path) -> dict:
    """status.json, with a run whose process died without saying so reported as failed."""
    status = read_json(Path(run_dir) / "status.json")
    if status.get("state") in ACTIVE_STATES and status.get("pid") and not pid_alive(status.get("pid")):
        status = {**status, "state": "failed", "error": status.get("error") or
                  "the training process ended without finishing (killed, crashed or the machine "
                  "restarted); see log.txt, and resume it from its last checkpoint"}
    return status


def list_runs(root: Path | None = None) -> list[dict]:
    """Every run folder, newest first, with its config, status and last metrics record.

    A launched run has status.json (and, launched from the app, config.json) from the start, so it is
    listed at once and a second launch in its start-up window is refused.
    """
    root = root or runs_root()
    if not root.is_dir():
        return []
    runs = []
    for path in sorted((p for p in root.iterdir() if (p / "config.json").is_file() or (p / "status.json").is_file()),
                       reverse=True):
        metrics = read_metrics(path)
        runs.append({"id": path.name, "path": path, "config": read_json(path / "config.json"),
                     "status": read_status(path), "metrics": metrics})
    return runs


def active_run(root: Path | None = None) -> dict | None:
    """The run that is using the machine now, if any (this machine runs one at a time)."""
    for run in list_runs(root):
        if run["status"].get("state") in ACTIVE_STATES and pid_alive(run["status"].get("pid")):
            return run
    return None


def _record_started(run_dir: Path, pid: int) -> None:
    """The child exists: "running" with its pid at once, as the child itself writes when it starts,
    so every view of the run shows one state from the first moment. A child that already wrote its
    own state (running, or failed) keeps it."""
    if read_json(run_dir / "status.json").get("state") == "queued":
        write_status(run_dir, "running", pid=pid)


class RunBusyError(RuntimeError):
    """Another run is using the machine (2 cores: one training run at a time)."""


def launch(train_args: list[str], name: str, root: Path | None = None, config: dict | None = None) -> Path:
    """Start `python -m derm train ...` detached in its own process session and return its run folder.

    The caller passes an argument list (never a shell string); output goes to runs/<id>/log.txt.
    The process outlives the app and the browser tab; the run's files are how anyone finds it again.
    `config` (the TrainConfig as a dict) is written as config.json before the process starts, so the
    run shows its task, architecture and input size at once, not only once its data is loaded (the
    child then rewrites it with the normalisation it measured).
    """
    _refuse_if_busy(root)
    run_dir = new_run_dir(name, root)
    if config is not None:
        write_json_atomic(run_dir / "config.json", config)
    write_status(run_dir, "queued", pid=None, error=None, epoch=0, epochs=(config or {}).get("epochs"))
    _spawn(run_dir, [*train_args, "--run-dir", str(run_dir)], log_mode="w")
    return run_dir


def resume(run_dir: Path) -> Path:
    """Continue a stopped or failed run from its last checkpoint, in the background."""
    run_dir = Path(run_dir)
    if not (run_dir / "last.pt").is_file():
        raise FileNotFoundError(f"{run_dir.name} has no checkpoint yet: it stopped before finishing an epoch")
    _refuse_if_busy(run_dir.parent)
    write_status(run_dir, "queued", error=None)
    _spawn(run_dir, ["classifier", "--resume", str(run_dir)], log_mode="a")
    return run_dir


def _refuse_if_busy(root: Path | None) -> None:
    busy = active_run(root)
    if busy is not None:
        raise RunBusyError(f"run {busy['id']} is still {busy['status'].get('state')}; this machine trains one run "
                           "at a time: wait for it or stop it first")


def _spawn(run_dir: Path, train_args: list[str], log_mode: str) -> None:
    """`python -m derm train <train_args>` in its own process session, output appended to the run's log.txt."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(run_dir / "log.txt", log_mode) as log:
        process = subprocess.Popen([sys.executable, "-m", "derm", "train", *train_args], cwd=REPO_ROOT, stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=env)
    _record_started(run_dir, process.pid)


def stop(run_dir: Path) -> bool:
    """Ask a run to stop gracefully (SIGTERM: it finishes the batch and keeps its last checkpoint)."""
    pid = read_json(Path(run_dir) / "status.json").get("pid")
    if not pid_alive(pid):
        return False
    os.kill(pid, signal.SIGTERM)
    return True
