"""Training runs as the app's training page sees them: the command line for a config, progress and
ETA, a table of past runs, and promoting finished runs to a new weights folder.

Runs themselves are folders of files (derm.runs); nothing here keeps state in memory, so a run
started from one browser tab is found again from another, or after the app restarts.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from derm import runs
from derm.export import export
from derm.train import TrainConfig

CLASSIFIER_CURVES = ("balanced_accuracy", "macro_f1", "macro_auc", "accuracy")
SEGMENTER_CURVES = ("dice", "iou")


def run_name(text: str, config: TrainConfig) -> str:
    """A folder-safe run name from what the user typed; the architecture when they typed nothing."""
    cleaned = re.sub(r"[^A-Za-z0-9_]+", "-", text).strip("-")[:40]
    return cleaned or config.arch


def is_active(status: dict) -> bool:
    return status.get("state") in runs.ACTIVE_STATES


def eta_seconds(status: dict, records: list[dict]) -> float | None:
    """Seconds left for an active run: mean training seconds per finished epoch times epochs left
    (validation time excluded, so it is a slight underestimate). None before the first epoch."""
    if not is_active(status) or not records:
        return None
    per_epoch = sum(r.get("seconds", 0.0) for r in records) / len(records)
    done = int(status.get("epoch") or records[-1].get("epoch", len(records)))
    return max(int(status.get("epochs") or done) - done, 0) * per_epoch


def curve_columns(records: list[dict]) -> tuple[list[str], list[str]]:
    """(loss columns, validation metric columns) present in a run's metrics records."""
    present = set().union(*(r.keys() for r in records)) if records else set()
    losses = [c for c in ("train_loss", "val_loss") if c in present]
    metrics = [c for c in (*CLASSIFIER_CURVES, *SEGMENTER_CURVES) if c in present]
    return losses, metrics


def best_record(records: list[dict], best_epoch: int | None) -> dict:
    """The metrics record of the best epoch (by the run's own selection score)."""
    return next((r for r in records if r.get("epoch") == best_epoch), {})


def runs_table(all_runs: list[dict]) -> pd.DataFrame:
    """One row per run, newest first: what it trains, how far it got, its best validation numbers."""
    rows = []
    for run in all_runs:
        config, status, records = run["config"], run["status"], run["metrics"]
        best = best_record(records, status.get("best_epoch"))
        rows.append({
            "run": run["id"], "task": config.get("task"), "arch": config.get("arch"), "state": status.get("state"),
            "input": f"{config['height']}x{config['width']}" if "height" in config else None,
            "sampling": config.get("sampling"), "augment": config.get("augment"),
            "epoch": f"{status.get('epoch') or 0}/{status.get('epochs') or config.get('epochs')}",
            "best epoch": status.get("best_epoch"), "best score": status.get("best_score"),
            **{k: best.get(k) for k in (*CLASSIFIER_CURVES[:3], *SEGMENTER_CURVES)},
            "train minutes": round(sum(r.get("seconds", 0.0) for r in records) / 60, 1),
            "images/s": records[-1].get("images_per_s") if records else None,
            "limit": config.get("limit") or None,
        })
    return pd.DataFrame(rows)


def promotable(all_runs: list[dict], task: str) -> list[dict]:
    """Runs of `task` that are not running and have a best checkpoint to export."""
    return [r for r in all_runs if r["config"].get("task") == task and not is_active(r["status"])
            and (Path(r["path"]) / "best.pt").is_file()]


def model_names(classifier_runs: list[Path]) -> list[str]:
    """Manifest names for the classifiers: their architecture, numbered when two share one."""
    names: list[str] = []
    for run_dir in classifier_runs:
        arch = runs.read_json(Path(run_dir) / "config.json").get("arch", "classifier")
        names.append(arch if arch not in names else f"{arch}_{len(names) + 1}")
    return names


def new_weights_dir(run_dir: Path) -> Path:
    """runs/<id>/weights, or weights-2, -3...: a promotion never overwrites an earlier one."""
    for suffix in [""] + [f"-{i}" for i in range(2, 100)]:
        candidate = Path(run_dir) / f"weights{suffix}"
        if not candidate.exists():
            return candidate
    raise RuntimeError(f"too many weights folders in {run_dir}")


def promote(classifier_runs: list[Path], unet_run: Path | None = None) -> Path:
    """Export finished runs into a new weights folder inside the first run and return it.

    The first classifier answers the frequent classes, a second one (optional) the rare ones, as in
    the shipped ensemble. Runs all trained on a subset (--limit) are evaluated on a subset of the same size.
    The shipped weights/ folder is never touched.
    """
    if not classifier_runs:
        raise ValueError("choose at least one finished classifier run")
    for run_dir in [*classifier_runs, *([unet_run] if unet_run else [])]:
        if not (Path(run_dir) / "best.pt").is_file():
            raise ValueError(f"{Path(run_dir).name} has no best checkpoint yet (best.pt)")
    limits = [runs.read_json(Path(r) / "config.json").get("limit") or 0 for r in classifier_runs]
    out = new_weights_dir(classifier_runs[0])
    export(dict(zip(model_names(classifier_runs), map(Path, classifier_runs))), Path(unet_run) if unet_run else None,
           out, limit=0 if 0 in limits else max(limits))
    return out


def log_tail(run_dir: Path, lines: int = 20) -> str:
    """The end of a run's log.txt: what to read when it failed."""
    path = Path(run_dir) / "log.txt"
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
