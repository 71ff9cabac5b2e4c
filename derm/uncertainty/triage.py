"""Malignancy triage: "could this be malignant?" as one score and one operating point.

The score is the ensemble's probability of the malignant and pre-malignant classes together
(MEL + BCC + AKIEC). The operating point is the highest threshold that still flags the target share
(95%) of the malignant validation images: a high sensitivity, at whatever specificity that leaves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from derm.classes import CLASSES

MALIGNANT = ("AKIEC", "BCC", "MEL")
TARGET_SENSITIVITY = 0.95
MALIGNANT_INDEX = [CLASSES.index(c) for c in MALIGNANT]


def malignancy_score(probs: np.ndarray) -> np.ndarray:
    """P(MEL) + P(BCC) + P(AKIEC) per image (N x 7 probabilities in, N scores in [0, 1] out)."""
    return np.clip(np.asarray(probs, dtype=np.float64)[:, MALIGNANT_INDEX].sum(1), 0.0, 1.0)


def is_malignant(y: np.ndarray) -> np.ndarray:
    return np.isin(np.asarray(y, dtype=int), MALIGNANT_INDEX)


def threshold_for_sensitivity(scores: np.ndarray, positive: np.ndarray, target: float = TARGET_SENSITIVITY) -> float:
    """The highest threshold t with share(score >= t among positives) >= target."""
    positives = np.sort(np.asarray(scores, dtype=np.float64)[np.asarray(positive, dtype=bool)])
    if not len(positives):
        raise ValueError("no malignant images to choose the triage threshold on")
    missed = math.floor(len(positives) * (1 - target) + 1e-9)  # positives allowed under the threshold
    return float(positives[missed])


def sensitivity_specificity(scores: np.ndarray, positive: np.ndarray, threshold: float) -> dict:
    """Sensitivity and specificity of `score >= threshold`, with their counts (None where undefined)."""
    from sklearn.metrics import roc_auc_score  # here: the app's pages import this module without sklearn

    from sklearn.metrics import roc_auc_score  # measuring only: the app's pages read this module without it

    flagged = np.asarray(scores) >= threshold
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    tp, tn = int((flagged & positive).sum()), int((~flagged & ~positive).sum())
    auc = float(roc_auc_score(positive, scores)) if 0 < n_pos < len(positive) else None
    return {"sensitivity": tp / n_pos if n_pos else None, "specificity": tn / n_neg if n_neg else None,
            "n_malignant": n_pos, "n_benign": n_neg, "flagged": int(flagged.sum()), "auc": auc}


@dataclass
class TriageConfig:
    """The operating point and what it measured on validation."""

    threshold: float
    target_sensitivity: float = TARGET_SENSITIVITY
    val_sensitivity: float | None = None
    val_specificity: float | None = None

    def flags(self, probs: np.ndarray) -> np.ndarray:
        return malignancy_score(probs) >= self.threshold

    def to_dict(self) -> dict:
        return {"classes": list(MALIGNANT), "score": "P(MEL) + P(BCC) + P(AKIEC)",
                "threshold": round(self.threshold, 6), "target_sensitivity": self.target_sensitivity,
                "val_sensitivity": self.val_sensitivity, "val_specificity": self.val_specificity}

    @classmethod
    def from_dict(cls, section: dict) -> TriageConfig:
        return cls(float(section["threshold"]), float(section.get("target_sensitivity", TARGET_SENSITIVITY)),
                   section.get("val_sensitivity"), section.get("val_specificity"))


def fit_triage(probs: np.ndarray, y: np.ndarray, target: float = TARGET_SENSITIVITY) -> TriageConfig:
    """The operating point at `target` validation sensitivity, with the specificity it leaves."""
    scores, positive = malignancy_score(probs), is_malignant(y)
    threshold = threshold_for_sensitivity(scores, positive, target)
    measured = sensitivity_specificity(scores, positive, threshold)
    return TriageConfig(threshold, target, measured["sensitivity"], measured["specificity"])


def malignancy_roc(probs: np.ndarray, y: np.ndarray, threshold: float) -> dict | None:
    """The ROC of the malignancy score (malignant against the rest) and the operating point on it: its
    false and true positive rates at `threshold`. None when a side is absent."""
    from sklearn.metrics import roc_curve

    scores, positive = malignancy_score(probs), is_malignant(y)
    if not 0 < positive.sum() < len(positive):
        return None
    fpr, tpr, _ = roc_curve(positive, scores)
    point = sensitivity_specificity(scores, positive, threshold)
    return {"fpr": fpr, "tpr": tpr, "auc": point["auc"], "point_fpr": 1 - point["specificity"],
            "point_tpr": point["sensitivity"], "threshold": threshold}
