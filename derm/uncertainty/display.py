"""What the pages say about one image's uncertainty: its prediction set and its malignancy triage, in
words a research demo can stand behind (each number measured on HAM10000 validation, no advice)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from derm.classes import CLASSES
from derm.uncertainty.config import UncertaintyConfig
from derm.uncertainty.conformal import slots_disagree
from derm.uncertainty.triage import malignancy_score


@dataclass
class ImageUncertainty:
    """One image's set at a level, with what backs it, and its triage."""

    level: float
    codes: list[str]
    val_coverage: float | None
    malignancy: float
    flagged: bool
    threshold: float
    val_sensitivity: float | None
    val_specificity: float | None
    apart: bool = False  # the slots disagree and such images have thresholds of their own
    disagree_coverage: float | None = None  # the slots disagree, not calibrated apart: such validation images' coverage


def for_image(config: UncertaintyConfig, probabilities: dict[str, float], level: float | None = None,
              per_slot: dict[str, dict[str, float]] | None = None) -> ImageUncertainty:
    """The set and triage of one analysed image (probabilities keyed by class code; per_slot: each slot's,
    as Result.per_model holds them)."""
    probs = np.array([[probabilities[c] for c in CLASSES]], dtype=np.float64)
    slots = {name: np.array([[p[c] for c in CLASSES]]) for name, p in (per_slot or {}).items()} or None
    level = config.level(level)
    score = float(malignancy_score(probs)[0])
    disagree = slots_disagree(slots)
    apart = bool(disagree is not None and disagree[0] and config.conformal.by_agreement.get(level))
    unsure = config.val_coverage_disagree.get(level) if disagree is not None and disagree[0] and not apart else None
    return ImageUncertainty(level, config.prediction_sets(probs, level, slots)[0], config.val_coverage.get(level), score,
                            score >= config.triage.threshold, config.triage.threshold,
                            config.triage.val_sensitivity, config.triage.val_specificity, apart,
                            unsure if unsure is not None and unsure < level else None)


def set_sentence(item: ImageUncertainty) -> str:
    """'One of: MEL, NV' with the share of validation images whose set held the truth."""
    listed = ", ".join(item.codes)
    lead = f"**{listed}**" if len(item.codes) == 1 else f"one of **{listed}**"
    measured = "" if item.val_coverage is None else f" ({item.val_coverage:.1%} measured)"
    apart = (" The ensemble's models disagree on this image, so its set is calibrated on the validation images "
             "where they disagreed too, and is wider." if item.apart else "")
    if item.disagree_coverage is not None:
        apart = (" The ensemble's models disagree on this image: for validation images where they disagreed, the "
                 f"sets held the true diagnosis only {item.disagree_coverage:.0%} of the time, so the stated coverage "
                 "may not hold for this one.")
    return (f"Prediction set at {item.level:.0%}: {lead}. Sets made this way held the true diagnosis for at "
            f"least {item.level:.0%} of HAM10000 validation images{measured}.{apart}")


def triage_sentence(item: ImageUncertainty) -> tuple[str, str]:
    """(headline, explanation) of the malignancy triage in two levels."""
    sens = "–" if item.val_sensitivity is None else f"{item.val_sensitivity:.0%}"
    spec = "–" if item.val_specificity is None else f"{item.val_specificity:.0%}"
    behind = (f"Malignancy score (MEL + BCC + AKIEC) {item.malignancy:.0%}; the research operating point is "
              f"{item.threshold:.0%}, where on HAM10000 validation {sens} of malignant and pre-malignant lesions "
              f"scored at or above it (sensitivity) and {spec} of the others below it (specificity).")
    if item.flagged:
        return "Higher concern: above the malignancy operating point", behind
    missed = "" if item.val_sensitivity is None else \
        f" Below the point is not 'benign': {1 - item.val_sensitivity:.0%} of malignant validation lesions were too."
    return "Lower concern: below the malignancy operating point", behind + missed
