"""Cleaning the U-Net's thresholded mask before it is shown or measured: one lesion, not the
dermatoscope's vignette.

The U-Net marks dark corners and rims of the dermatoscope's field of view as lesion on images unlike
HAM10000's. Those regions touch the image border and sit far from the centre, where a photographed
lesion almost never is, so the rule keeps the connected component with the largest
centrality-weighted area (each pixel weighted by 1 - its distance to the image centre over the
half-diagonal: 1 at the centre, 0 in the corners; a rim around the whole field has a central
centroid but little weight) and fills its holes.

The rule and its parameters were chosen on validation (HAM10000 val at 600x450 and
isic2018_task1 val at 256x256, `python scripts/choose_cleaning.py`; docs/tried.md) and are written
into the U-Net's manifest entry as `cleaning`; a manifest without that field means no cleaning, as
those weights were scored.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from functools import lru_cache

import cv2
import numpy as np

RULES = ("none", "largest", "central")


@dataclass(frozen=True)
class CleanConfig:
    """rule: "none" (the thresholded mask as it is), "largest" (the component with the most pixels)
    or "central" (the component with the most centrality-weighted pixels, each weighted by
    (1 - r / R) ** power).
    keep_share: also keep other components whose score is at least this share of the best's
    (0: the one best component). opening: radius of a morphological opening before the components
    are found, as a share of the image's shorter side (0: none), to cut thin bridges to a rim.
    drop_border: ignore components touching the image border while one that does not, with at least
    border_min_area of the image, exists. fill_holes: fill enclosed holes of what is kept."""

    rule: str = "none"
    power: float = 1.0
    keep_share: float = 0.0
    opening: float = 0.0
    drop_border: bool = False
    border_min_area: float = 0.01
    fill_holes: bool = False

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"mask cleaning rule {self.rule!r} is not one of {RULES}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict | None) -> CleanConfig:
        """From a manifest entry's `cleaning` (unknown keys ignored); None or {} means no cleaning."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (values or {}).items() if k in known})

    def describe(self) -> str:
        if self.rule == "none" and not self.fill_holes and not self.opening:
            return "none"
        parts = {"largest": "largest component", "central": "most central large component",
                 "none": "all components"}[self.rule]
        if self.rule == "central":
            parts += f" (pixels weighted by (1 - r/R)^{self.power:g})"
        if self.keep_share and self.rule != "none":
            parts += f" (+ others scoring >= {self.keep_share:g} of it)"
        if self.drop_border:
            parts += ", border-touching components dropped when another exists"
        if self.opening:
            parts = f"opening (radius {self.opening:g} of the shorter side), then " + parts
        if self.fill_holes:
            parts += ", holes filled"
        return parts


NONE = CleanConfig()
# chosen on HAM10000 val and isic2018_task1 val (scripts/choose_cleaning.py); export writes it into the manifest
CHOSEN = CleanConfig(rule="central", fill_holes=True)


@lru_cache(maxsize=8)
def centrality(shape: tuple[int, int]) -> np.ndarray:
    """Per-pixel weight 1 - r / R (r: distance to the image centre, R: half the diagonal)."""
    height, width = shape
    yy, xx = np.ogrid[:height, :width]
    r = np.hypot(yy - (height - 1) / 2, xx - (width - 1) / 2)
    weight = np.clip(1.0 - r / (0.5 * np.hypot(height, width)), 0.0, 1.0).astype(np.float32)
    weight.setflags(write=False)
    return weight


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill background regions not connected to the image border (4-connected background)."""
    padded = np.pad(mask.astype(np.uint8), 1)
    outside = padded.copy()
    flood = np.zeros((padded.shape[0] + 2, padded.shape[1] + 2), np.uint8)
    cv2.floodFill(outside, flood, (0, 0), 2, flags=4)
    return (outside != 2)[1:-1, 1:-1]


def clean(mask: np.ndarray, config: CleanConfig = CHOSEN) -> np.ndarray:
    """The cleaned boolean mask (same shape) of a boolean lesion mask."""
    mask = np.asarray(mask, dtype=bool)
    if config.opening:
        radius = max(1, round(config.opening * min(mask.shape)))
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        opened = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, kernel).astype(bool)
        mask = opened if opened.any() else mask  # an opening that erases everything keeps the original
    if config.rule != "none" and mask.any():
        mask = _select_components(mask, config)
    if config.fill_holes:
        mask = fill_holes(mask)
    return mask


def _select_components(mask: np.ndarray, config: CleanConfig) -> np.ndarray:
    # connectedComponents without stats: the stats variant costs ~10x more here (areas come from bincount)
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    if count <= 2 and not config.drop_border:
        return mask
    flat = labels.ravel()
    areas = np.bincount(flat, minlength=count).astype(float)
    if config.rule == "central":
        weight = centrality(mask.shape) if config.power == 1 else centrality(mask.shape) ** config.power
        scores = np.bincount(flat, weights=weight.ravel(), minlength=count)
    else:
        scores = areas.copy()
    scores[0] = -1.0  # the background
    if config.drop_border:
        touches = np.zeros(count, bool)
        touches[np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])] = True
        inner = ~touches & (areas >= config.border_min_area * mask.size)
        inner[0] = False
        if inner.any():
            scores = np.where(inner, scores, -1.0)
    best = scores.max()
    if best <= 0:  # only zero-weight components (in the very corners): keep the largest
        scores = areas.copy()
        scores[0] = -1.0
        best = scores.max()
    keep = scores >= (config.keep_share * best if config.keep_share else best)
    keep[0] = False
    if config.keep_share:
        keep &= scores > 0
    return keep[labels]
