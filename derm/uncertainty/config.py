"""The manifest's `uncertainty` section: fitted from validation probabilities, read back by every user.

`fit_uncertainty(val_probs, y_val)` is what an export calls (manifest["uncertainty"] = its result);
`UncertaintyConfig.from_manifest(manifest)` is what the Predictor side calls, and gives None for weights
exported without the section (then no set and no triage are shown).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from derm.classes import CLASSES
from derm.uncertainty.conformal import (DEFAULT_LEVEL, LEVELS, ConformalConfig, check_level, fit_conformal,
                                        slots_disagree)
from derm.uncertainty.triage import TriageConfig, fit_triage, malignancy_score

SECTION = "uncertainty"
VERSION = 1


@dataclass
class UncertaintyConfig:
    """Prediction sets and the malignancy operating point of one ensemble."""

    conformal: ConformalConfig
    triage: TriageConfig
    val_coverage: dict[float, float]  # level -> coverage measured on the calibration images
    val_mean_size: dict[float, float]
    val_coverage_disagree: dict[float, float] = field(default_factory=dict)  # the same, images whose slots disagree

    @property
    def levels(self) -> tuple[float, ...]:
        return self.conformal.levels

    def level(self, level: float | None = None) -> float:
        """The stored level for `level` (default: 90%); ValueError for one that was not fitted."""
        return check_level(DEFAULT_LEVEL if level is None else level, self.levels)

    def prediction_sets(self, probs: np.ndarray, level: float | None = None,
                        slot_probs: dict[str, np.ndarray] | None = None) -> list[list[str]]:
        """Each image's set, most probable first; `slot_probs` (each slot's N x 7) tells the images whose
        slots disagree, which may have thresholds of their own."""
        return self.conformal.sets(probs, self.level(level), slots_disagree(slot_probs))

    def membership(self, probs: np.ndarray, level: float | None = None,
                   slot_probs: dict[str, np.ndarray] | None = None) -> np.ndarray:
        return self.conformal.membership(probs, self.level(level), slots_disagree(slot_probs))

    def row_fields(self, probs: np.ndarray, level: float | None = None,
                   slot_probs: dict[str, np.ndarray] | None = None) -> dict:
        """The `predict` columns for one image's 7 probabilities (and its slots'): prediction_set (codes,
        most probable first, joined by |), malignancy_score and malignancy_flag."""
        probs = np.asarray(probs, dtype=np.float64).reshape(1, -1)
        slots = None if slot_probs is None else {k: np.asarray(v).reshape(1, -1) for k, v in slot_probs.items()}
        score = float(malignancy_score(probs)[0])
        return {"prediction_set": "|".join(self.prediction_sets(probs, level, slots)[0]),
                "malignancy_score": round(score, 6), "malignancy_flag": bool(score >= self.triage.threshold)}

    def to_dict(self) -> dict:
        return {"version": VERSION, "fitted_on": "HAM10000 validation split", "default_level": DEFAULT_LEVEL,
                "sets": self.conformal.to_dict(), "triage": self.triage.to_dict(),
                "val": {f"{level:g}": {"coverage": round(self.val_coverage[level], 4),
                                       "mean_size": round(self.val_mean_size[level], 4),
                                       **({"coverage_slots_disagree": round(self.val_coverage_disagree[level], 4)}
                                          if level in self.val_coverage_disagree else {})}
                        for level in self.levels}}

    @classmethod
    def from_dict(cls, section: dict) -> UncertaintyConfig:
        val = {float(k): v for k, v in section.get("val", {}).items()}
        return cls(ConformalConfig.from_dict(section["sets"]), TriageConfig.from_dict(section["triage"]),
                   {k: float(v["coverage"]) for k, v in val.items()}, {k: float(v["mean_size"]) for k, v in val.items()},
                   {k: float(v["coverage_slots_disagree"]) for k, v in val.items() if "coverage_slots_disagree" in v})

    @classmethod
    def from_manifest(cls, manifest: dict) -> UncertaintyConfig | None:
        """The section of a manifest, or None when it has none (or one this code cannot read: then a
        warning, and the app runs without sets rather than failing)."""
        section = manifest.get(SECTION)
        if not section:
            return None
        if section.get("version") != VERSION:
            warnings.warn(f"uncertainty section version {section.get('version')} is not {VERSION}: no prediction sets",
                          stacklevel=2)
            return None
        try:
            return cls.from_dict(section)
        except (KeyError, TypeError, ValueError) as exc:
            warnings.warn(f"unreadable uncertainty section ({exc!r}): no prediction sets", stacklevel=2)
            return None


def fit_uncertainty_config(val_probs: np.ndarray, y_val: np.ndarray,
                           val_slot_probs: dict[str, np.ndarray] | None = None, levels: tuple[float, ...] = LEVELS
                           ) -> tuple[UncertaintyConfig, dict]:
    """Sets and triage from validation probabilities and labels (and each slot's probabilities, whose
    disagreement may mark images to calibrate apart); also what chose the sets' settings."""
    val_probs, y_val = np.asarray(val_probs, dtype=np.float64), np.asarray(y_val, dtype=int)
    disagree = slots_disagree(val_slot_probs)
    conformal, choice = fit_conformal(val_probs, y_val, levels, disagree=disagree)
    triage = fit_triage(val_probs, y_val)
    coverage, size, coverage_disagree = {}, {}, {}
    for level in conformal.levels:
        member = conformal.membership(val_probs, level, disagree)
        covered = member[np.arange(len(y_val)), y_val]
        coverage[level], size[level] = float(covered.mean()), float(member.sum(1).mean())
        if disagree is not None and disagree.any():
            coverage_disagree[level] = float(covered[disagree].mean())
    return UncertaintyConfig(conformal, triage, coverage, size, coverage_disagree), choice


def fit_uncertainty(val_probs: np.ndarray, y_val: np.ndarray, val_slot_probs: dict[str, np.ndarray] | None = None
                    ) -> dict:
    """manifest["uncertainty"]: the JSON-able section fitted on the ensemble's validation probabilities
    (N x 7, the class order of derm.classes), labels (class indices) and, when given, each slot's
    validation probabilities (the `slots` of Predictor.ensemble)."""
    config, choice = fit_uncertainty_config(val_probs, y_val, val_slot_probs)
    return {**config.to_dict(), "choice": choice, "classes": list(CLASSES)}
