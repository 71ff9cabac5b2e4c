"""How the prediction sets and the triage hold on a labelled set: coverage, set sizes, sensitivity and
specificity; and each image's set, for the explorer's list of images whose set missed."""

from __future__ import annotations

import numpy as np
import pandas as pd

from derm.classes import CLASSES, NUM_CLASSES
from derm.uncertainty.config import UncertaintyConfig
from derm.uncertainty.conformal import slots_disagree
from derm.uncertainty.triage import is_malignant, malignancy_score, sensitivity_specificity


def as_config(section: dict | UncertaintyConfig) -> UncertaintyConfig:
    return section if isinstance(section, UncertaintyConfig) else UncertaintyConfig.from_dict(section)


def level_report(member: np.ndarray, y: np.ndarray) -> dict:
    """Coverage and mean set size overall and for each class present, and how many sets have each size."""
    covered = member[np.arange(len(y)), y]
    sizes = member.sum(1)
    per_class = {CLASSES[c]: {"n": int((y == c).sum()), "coverage": float(covered[y == c].mean()),
                              "mean_size": float(sizes[y == c].mean())}
                 for c in range(NUM_CLASSES) if (y == c).any()}
    return {"n": int(len(y)), "coverage": float(covered.mean()), "mean_size": float(sizes.mean()),
            "size_counts": {str(k): int((sizes == k).sum()) for k in range(1, NUM_CLASSES + 1)},
            "per_class": per_class, "min_class_coverage": min(v["coverage"] for v in per_class.values())}


def uncertainty_report(probs: np.ndarray, y: np.ndarray, section: dict | UncertaintyConfig,
                       slot_probs: dict[str, np.ndarray] | None = None) -> dict:
    """For metrics.json, external.json and evaluate-set: each level's coverage and set sizes (overall and
    per class present), and the triage's sensitivity and specificity at the shipped operating point.
    `slot_probs`: each slot's probabilities (N x 7), for sets that treat images whose slots disagree apart."""
    config = as_config(section)
    probs, y = np.asarray(probs, dtype=np.float64), np.asarray(y, dtype=int)
    levels = {f"{level:g}": level_report(config.membership(probs, level, slot_probs), y) for level in config.levels}
    triage = sensitivity_specificity(malignancy_score(probs), is_malignant(y), config.triage.threshold)
    return {"levels": levels, "triage": {"threshold": config.triage.threshold, **triage}}


def set_frame(ids: list[str], probs: np.ndarray, y: np.ndarray | None, config: UncertaintyConfig,
              level: float | None = None, slot_probs: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """One row per image: its set at `level` (codes joined by |), set size, whether it holds the truth
    (when labels are given), malignancy score and flag."""
    probs = np.asarray(probs, dtype=np.float64)
    member = config.membership(probs, level, slot_probs)
    disagree = slots_disagree(slot_probs)
    frame = pd.DataFrame({"image_id": list(ids),
                          "prediction_set": ["|".join(s) for s in config.prediction_sets(probs, level, slot_probs)],
                          "set_size": member.sum(1),
                          "malignancy_score": malignancy_score(probs).round(6),
                          "malignancy_flag": config.triage.flags(probs),
                          "slots_disagree": np.zeros(len(probs), dtype=bool) if disagree is None else disagree})
    if y is not None:
        y = np.asarray(y, dtype=int)
        frame.insert(1, "true", [CLASSES[k] for k in y])
        frame.insert(3, "covered", member[np.arange(len(y)), y])
    return frame


def missed(frame: pd.DataFrame) -> pd.DataFrame:
    """The images whose set does not hold the true diagnosis (rows of set_frame), largest sets first."""
    return frame[~frame["covered"]].sort_values(["set_size", "image_id"], ascending=[False, True]).reset_index(drop=True)


def predictions_probabilities(frame: pd.DataFrame) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """(ensemble probabilities, each slot's, labels) of test_predictions.csv's rows (columns <model>_<class>)."""
    from derm.classes import CLASS_INDEX

    def columns(prefix: str) -> np.ndarray:
        return frame[[f"{prefix}_{c}" for c in CLASSES]].to_numpy(dtype=np.float64)

    slots = {m: columns(m) for m in (c.removesuffix("_pred") for c in frame.columns if c.endswith("_pred"))
             if m != "ensemble"}
    return columns("ensemble"), slots, frame["true"].map(CLASS_INDEX).to_numpy(dtype=int)


def test_split_sets(frame: pd.DataFrame, config: UncertaintyConfig, level: float | None = None
                    ) -> tuple[pd.DataFrame, dict]:
    """set_frame of the ensemble's rows of test_predictions.csv, and the level_report of those sets."""
    probs, slots, y = predictions_probabilities(frame)
    sets = set_frame(list(frame["image_id"]), probs, y, config, level, slots)
    return sets, level_report(config.membership(probs, level, slots), y)
