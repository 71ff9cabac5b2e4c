"""`python -m derm calibrate-uncertainty`: refit the prediction sets and the malignancy triage of a weights
folder from its ensemble's HAM10000 validation probabilities, without a full export.

The validation probabilities are computed exactly as `derm.export` computes them (each network on the
cached validation images, tempered, slots averaged, routed and prior-corrected by the Predictor), so the
section written here equals the one an export writes for the same networks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from derm import data
from derm.evaluate import classifier_probabilities, split_table
from derm.pipeline import Predictor


@dataclass
class SplitProbabilities:
    """One split's ensemble probabilities (N x 7), each slot's (what the ensemble combines), labels and ids."""

    probs: np.ndarray
    slots: dict[str, np.ndarray]
    y: np.ndarray
    ids: list[str]


def split_probabilities(predictor: Predictor, split: str, data_dir: str | None = None,
                        limit: int = 0) -> SplitProbabilities:
    """The ensemble's and each slot's probabilities on one split of the weights' own split.csv, computed
    as the export computes them."""
    part = split_table(predictor.weights_dir / "split.csv", data_dir, split, limit)
    per_model = {}
    for name, clf in predictor.classifiers.items():
        images = data.cached_array(list(part["image_path"]), clf.input_hw, "image")
        per_model[name] = classifier_probabilities(clf, images)
    combined, slots = predictor.ensemble(per_model)
    return SplitProbabilities(combined, slots, part["label_idx"].to_numpy(dtype=int), list(part["image_id"]))


def cached_split_probabilities(predictor: Predictor, split: str, cache: Path | None, data_dir: str | None = None,
                               limit: int = 0) -> SplitProbabilities:
    """split_probabilities, read from `cache` (.npz) when it holds them for these weights, else computed and
    stored there: refitting after a code change then costs no network pass."""
    key = _weights_key(predictor)
    if cache is not None and Path(cache).is_file():
        stored = np.load(cache, allow_pickle=False)
        if (str(stored["key"]) == key and str(stored["split"]) == split and int(stored["limit"]) == limit
                and any(k.startswith("slot/") for k in stored.files)):
            slots = {k.removeprefix("slot/"): stored[k] for k in stored.files if k.startswith("slot/")}
            return SplitProbabilities(stored["probs"], slots, stored["y"], [str(i) for i in stored["ids"]])
    found = split_probabilities(predictor, split, data_dir, limit)
    if cache is not None:
        np.savez(cache, probs=found.probs, y=found.y, ids=np.array(found.ids), key=key, split=split, limit=limit,
                 **{f"slot/{name}": p for name, p in found.slots.items()})
    return found


def _weights_key(predictor: Predictor) -> str:
    """What the ensemble's probabilities depend on: the manifest's models and ensemble entries."""
    manifest = predictor.manifest
    return json.dumps({"models": manifest["models"], "ensemble": manifest["ensemble"]}, sort_keys=True)


def test_probabilities_from_export(weights_dir: Path, slots: list[str]) -> SplitProbabilities | None:
    """The ensemble's and the slots' test probabilities and labels as the export wrote them
    (test_predictions.csv), or None for weights exported without the test split."""
    import pandas as pd

    from derm.classes import CLASS_INDEX, CLASSES

    path = Path(weights_dir) / "test_predictions.csv"
    if not path.is_file():
        return None
    frame = pd.read_csv(path)

    def columns(prefix: str) -> np.ndarray:
        return frame[[f"{prefix}_{c}" for c in CLASSES]].to_numpy(dtype=np.float64)

    return SplitProbabilities(columns("ensemble"), {s: columns(s) for s in slots if f"{s}_{CLASSES[0]}" in frame},
                              frame["true"].map(CLASS_INDEX).to_numpy(dtype=int), list(frame["image_id"]))


def uncertainty_sections(ensemble_probs: dict[str, np.ndarray], labels: dict[str, np.ndarray],
                         slot_probs: dict[str, dict[str, np.ndarray]] | None = None) -> tuple[dict, dict]:
    """(manifest["uncertainty"], metrics["uncertainty"]) from each split's ensemble probabilities (N x 7) and
    labels, and where given each split's slot probabilities ({slot: N x 7}, the `slots` of
    Predictor.ensemble: images whose slots disagree may be calibrated apart). The section is fitted on
    "val" alone; every split given is then reported against it."""
    from derm.uncertainty import fit_uncertainty, uncertainty_report

    slot_probs = slot_probs or {}
    section = fit_uncertainty(ensemble_probs["val"], labels["val"], slot_probs.get("val"))
    return section, {split: uncertainty_report(p, labels[split], section, slot_probs.get(split))
                     for split, p in ensemble_probs.items()}


def calibrate_weights(weights_dir: Path, data_dir: str | None = None, cache: Path | None = None,
                      limit: int = 0) -> dict:
    """Fit the uncertainty section of a weights folder on HAM10000 val and write it into its manifest.json,
    with the val and test reports in its metrics.json. Returns metrics["uncertainty"]."""
    weights_dir = Path(weights_dir)
    predictor = Predictor(weights_dir, load_gate=False)
    splits = {"val": cached_split_probabilities(predictor, "val", cache, data_dir, limit)}
    test = test_probabilities_from_export(weights_dir, list(predictor.members))
    if test is not None:
        splits["test"] = test
    section, report = uncertainty_sections({k: v.probs for k, v in splits.items()}, {k: v.y for k, v in splits.items()},
                                           {k: v.slots for k, v in splits.items()})
    manifest = json.loads((weights_dir / "manifest.json").read_text())
    manifest["uncertainty"] = section
    (weights_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    metrics_path = weights_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    metrics["uncertainty"] = report
    metrics_path.write_text(json.dumps(metrics, indent=2))
    return report
