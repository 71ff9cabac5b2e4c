"""Lesion measurements from a binary mask, vectorised (numpy/OpenCV).

HAM10000 images carry no pixel spacing, so sizes are in pixels or relative to the image, never mm.
"""

from __future__ import annotations

import cv2
import numpy as np

# approximate RGB (0-255) of the six dermoscopic colours (Seidenari et al.; Kasmi & Mokrani 2016)
DERMOSCOPIC_COLOURS: dict[str, tuple[int, int, int]] = {
    "white": (235, 235, 235),
    "red": (190, 40, 45),
    "light brown": (180, 120, 80),
    "dark brown": (90, 50, 30),
    "blue-grey": (110, 120, 145),
    "black": (25, 20, 20),
}
COLOUR_MIN_SHARE = 0.05  # a colour counts when at least 5% of lesion pixels are nearest to it


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The biggest connected region: stray specks should not change the shape measures."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 1:
        return np.zeros_like(mask, dtype=bool)
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == biggest


def asymmetry(mask: np.ndarray) -> float:
    """1 - IoU of the mask with its mirror image across each principal axis, averaged over the two axes.

    0 is perfectly symmetric. The mask is rotated so its principal axes are the image axes and
    centred on its centroid before mirroring.
    """
    ys, xs = np.nonzero(mask)
    if len(xs) < 3:
        return 0.0
    cy, cx = ys.mean(), xs.mean()
    cov = np.cov(np.stack([xs - cx, ys - cy]))
    _, vecs = np.linalg.eigh(cov)
    angle = np.degrees(np.arctan2(vecs[1, -1], vecs[0, -1]))
    size = int(2 * np.ceil(np.hypot(*mask.shape))) + 1
    centre = size // 2
    canvas = np.zeros((size, size), np.uint8)
    canvas[ys - int(round(cy)) + centre, xs - int(round(cx)) + centre] = 1
    rotation = cv2.getRotationMatrix2D((centre, centre), angle, 1.0)
    aligned = cv2.warpAffine(canvas, rotation, (size, size), flags=cv2.INTER_NEAREST).astype(bool)
    scores = []
    for mirrored in (aligned[::-1, :], aligned[:, ::-1]):
        inter = np.logical_and(aligned, mirrored).sum()
        union = np.logical_or(aligned, mirrored).sum()
        scores.append(1 - inter / union if union else 0.0)
    return float(np.mean(scores))


def border_measures(mask: np.ndarray) -> dict:
    """Compactness perimeter^2 / (4 pi area) (1 for a disc, larger when ragged) and solidity."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return {"compactness": 0.0, "solidity": 0.0, "diameter_px": 0.0}
    contour = max(contours, key=cv2.contourArea)
    area = cv2.contourArea(contour)
    perimeter = cv2.arcLength(contour, closed=True)
    hull = cv2.convexHull(contour)
    hull_area = cv2.contourArea(hull)
    points = hull[:, 0, :].astype(float)
    diffs = points[:, None, :] - points[None, :, :]
    diameter = float(np.sqrt((diffs**2).sum(-1)).max()) if len(points) > 1 else 0.0
    return {"compactness": float(perimeter**2 / (4 * np.pi * area)) if area else 0.0,
            "solidity": float(area / hull_area) if hull_area else 0.0,
            "diameter_px": diameter}


def colours_present(rgb: np.ndarray, mask: np.ndarray) -> list[str]:
    """Dermoscopic colours that at least 5% of the lesion's pixels are nearest to."""
    pixels = rgb[mask].astype(np.float32)
    if len(pixels) == 0:
        return []
    palette = np.array(list(DERMOSCOPIC_COLOURS.values()), dtype=np.float32)
    nearest = np.argmin(((pixels[:, None, :] - palette[None, :, :]) ** 2).sum(-1), axis=1)
    shares = np.bincount(nearest, minlength=len(palette)) / len(pixels)
    return [name for name, share in zip(DERMOSCOPIC_COLOURS, shares) if share >= COLOUR_MIN_SHARE]


def measure(rgb: np.ndarray, mask: np.ndarray) -> dict:
    """Area, asymmetry, border irregularity, colour variegation and diameter of the main lesion."""
    mask = np.asarray(mask, dtype=bool)
    main = largest_component(mask)
    small = _downscale_for_colour(rgb, main)
    colours = colours_present(*small)
    border = border_measures(main)
    return {
        "area_px": int(mask.sum()),
        "area_fraction": float(mask.mean()),
        "asymmetry": asymmetry(main),
        "compactness": border["compactness"],
        "solidity": border["solidity"],
        "colours": colours,
        "colour_count": len(colours),
        "diameter_px": border["diameter_px"],
        "image_px": [int(mask.shape[1]), int(mask.shape[0])],
    }


def _downscale_for_colour(rgb: np.ndarray, mask: np.ndarray, max_side: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Colour shares do not need every pixel of a large photo; keep it interactive."""
    scale = max_side / max(mask.shape)
    if scale >= 1:
        return rgb, mask
    size = (round(mask.shape[1] * scale), round(mask.shape[0] * scale))
    small_mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA), small_mask
