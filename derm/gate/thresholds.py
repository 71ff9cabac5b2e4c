"""The gate's thresholds, chosen together.

The gate refuses an image when any of its checks does: the regression's P(dermatoscopic) is low, the
Mahalanobis distance from the dermatoscopic training images is large, the device network's
P(dermatoscopic) is low, or an ImageNet network sees an everyday object. Chosen one at a time, each
check kept 99% of every validation dermatoscopic source, and their refusals added up: derm7pt's
validation images lost 3% between them. Here one refusal share is searched for all checks at once,
the strictest for which the *whole gate* still keeps `keep` of every validation dermatoscopic source.
A check is per source at its quantile for that share, and the most lenient source sets it, so a
small atlas is not outvoted by a large one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHARES = np.geomspace(1e-4, 0.05, 80)  # per-check refusal shares searched, lenient to strict


@dataclass
class CheckScores:
    """One image set's scores under each check (NaN where the gate has no such check)."""

    probability: np.ndarray  # the regression's P(dermatoscopic): refused below the threshold
    distance: np.ndarray     # Mahalanobis distance: refused above
    device: np.ndarray       # the device network's P(dermatoscopic): refused below
    objects: np.ndarray      # the ImageNet object score: refused above
    grey: np.ndarray         # greyscale images, refused whatever the thresholds


@dataclass(frozen=True)
class Thresholds:
    min_probability: float
    max_distance: float
    net_min_probability: float
    object_threshold: float


def _lenient_low(values: list[np.ndarray], share: float) -> float:
    finite = [v[np.isfinite(v)] for v in values]
    return float(min(np.quantile(v, share) for v in finite)) if all(len(v) for v in finite) else float("-inf")


def _lenient_high(values: list[np.ndarray], share: float) -> float:
    finite = [v[np.isfinite(v)] for v in values]
    return float(max(np.quantile(v, 1 - share) for v in finite)) if all(len(v) for v in finite) else float("inf")


def thresholds_at(sources: dict[str, CheckScores], share: float) -> Thresholds:
    """Every check at the `share` quantile of each source, the most lenient source winning."""
    scores = list(sources.values())
    return Thresholds(_lenient_low([s.probability for s in scores], share),
                      _lenient_high([s.distance for s in scores], share),
                      _lenient_low([s.device for s in scores], share),
                      _lenient_high([s.objects for s in scores], share))


def refused(scores: CheckScores, t: Thresholds) -> np.ndarray:
    """Which images the whole gate refuses at these thresholds (a missing check refuses nothing)."""
    with np.errstate(invalid="ignore"):
        return (scores.grey | (scores.probability < t.min_probability) | (scores.distance > t.max_distance)
                | (scores.device < t.net_min_probability) | (scores.objects > t.object_threshold))


def choose_thresholds(sources: dict[str, CheckScores], keep: float) -> tuple[Thresholds, float]:
    """The strictest common per-check share at which the whole gate keeps `keep` of every source;
    returns the thresholds and that share (the most lenient share searched if none qualifies)."""
    chosen = (thresholds_at(sources, SHARES[0]), float(SHARES[0]))
    for share in SHARES:
        t = thresholds_at(sources, share)
        if all(refused(s, t).mean() <= 1 - keep + 1e-12 for s in sources.values()):
            chosen = (t, float(share))
    return chosen
