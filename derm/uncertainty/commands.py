"""The command line's side of the uncertainty: `calibrate-uncertainty`, and predict's three columns."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from derm.uncertainty.levels import DEFAULT_LEVEL, LEVELS

if TYPE_CHECKING:
    import numpy as np

    from derm.uncertainty.config import UncertaintyConfig

PREDICT_COLUMNS = ("prediction_set", "malignancy_score", "malignancy_flag")


def add_coverage_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--coverage", type=float, choices=LEVELS, default=DEFAULT_LEVEL,
                   help="prediction_set holds the true diagnosis for this share of HAM10000 validation images "
                        f"({', '.join(f'{x:g}' for x in LEVELS)}; default {DEFAULT_LEVEL:g})")


def predict_fields(config: UncertaintyConfig | None, probs: np.ndarray, level: float,
                   slot_probs: dict[str, np.ndarray] | None = None) -> dict:
    """predict's columns for one image (its 7 probabilities and each slot's): the set at `level`, the
    malignancy score and flag; empty (None) for weights exported without an uncertainty section."""
    if config is None:
        return dict.fromkeys(PREDICT_COLUMNS)
    return config.row_fields(probs, level, slot_probs)


def add_calibrate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate-uncertainty", help="refit the prediction sets and the malignancy triage of a "
                       "weights folder on HAM10000 val (no full export)",
                       description="Computes the ensemble's HAM10000 validation probabilities as the export does, "
                                   "fits the prediction sets (split conformal, RAPS score, per-class thresholds "
                                   "where a class needs them; 80/90/95%) and the malignancy operating point (95% "
                                   "validation sensitivity), writes them into manifest.json (uncertainty) and "
                                   "their val and test reports into metrics.json. Needs the full HAM10000.")
    p.add_argument("--weights", default="weights", help="weights folder to refit (default weights/)")
    p.add_argument("--data", help="HAM10000 folder (default: the usual lookup, docs/data.md)")
    p.add_argument("--cache", help="keep the validation probabilities in this .npz (reused while the networks "
                                   "and ensemble settings are unchanged)")
    p.add_argument("--limit", type=int, default=0, help="use at most N validation images (quick checks)")
    p.set_defaults(func=cmd_calibrate)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from derm.data import DataNotFoundError
    from derm.uncertainty.calibrate import calibrate_weights
    from derm.weights import WeightsNotFoundError

    try:
        report = calibrate_weights(Path(args.weights), args.data, Path(args.cache) if args.cache else None,
                                   args.limit)
    except (DataNotFoundError, WeightsNotFoundError, FileNotFoundError, ValueError, KeyError) as exc:
        print(f"derm calibrate-uncertainty: {exc}", file=sys.stderr)
        return 2
    for split, rep in report.items():
        for level, lv in rep["levels"].items():
            print(f"{split:5s} {level:>4s} coverage={lv['coverage']:.3f} mean_size={lv['mean_size']:.2f} "
                  f"min_class_coverage={lv['min_class_coverage']:.3f}")
        tri = rep["triage"]
        print(f"{split:5s} triage threshold={tri['threshold']:.4f} sensitivity={tri['sensitivity']:.3f} "
              f"specificity={tri['specificity']:.3f}")
    print(f"wrote the uncertainty section of {Path(args.weights) / 'manifest.json'} and its reports in metrics.json")
    return 0


def uncertainty_or_none(manifest: dict) -> UncertaintyConfig | None:
    """The weights' uncertainty section, or None (then one note on stderr: the columns stay empty)."""
    from derm.uncertainty.config import UncertaintyConfig

    config = UncertaintyConfig.from_manifest(manifest)
    if config is None:
        print("derm: these weights have no uncertainty section (python -m derm calibrate-uncertainty fits one): "
              "prediction_set and the malignancy columns are empty", file=sys.stderr)
    return config


def print_set_report(report: dict) -> None:
    """evaluate-set's lines for the prediction sets and the triage on a labelled set."""
    for level, lv in report["levels"].items():
        per_class = " ".join(f"{c}={v['coverage']:.2f}" for c, v in lv["per_class"].items())
        print(f"sets {level:>4s} coverage={lv['coverage']:.3f} mean_size={lv['mean_size']:.2f} per class: {per_class}")
    tri = report["triage"]
    spec = "n/a" if tri["specificity"] is None else f"{tri['specificity']:.3f}"
    sens = "n/a" if tri["sensitivity"] is None else f"{tri['sensitivity']:.3f}"
    print(f"triage sensitivity={sens} specificity={spec} (malignant {tri['n_malignant']}, benign {tri['n_benign']})")
    shift = report.get("shift", {})
    groups = {name.replace("_", " "): g for name, g in shift.items() if isinstance(g, dict) and "n" in g}
    groups.update(shift.get("gate", {}))
    for name, group in groups.items():
        if group["n"]:
            print(f"sets {shift['level']:g} where {name}: n={group['n']} coverage={group['coverage']:.3f} "
                  f"mean_size={group['mean_size']:.2f}")
