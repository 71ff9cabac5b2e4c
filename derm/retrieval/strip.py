"""The similar cases as one numbered strip of thumbnails.

One picture instead of one per case: a browser draws a single image element and fetches a single file per
result, which is what keeps the Diagnose page quick when many people use one server at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from derm.imageio import load_image

TILE_HW = (120, 160)  # each case's thumbnail, height x width (HAM10000's 3:4)
GAP = 4  # white pixels between thumbnails


def numbered(tile: np.ndarray, number: int) -> np.ndarray:
    """A thumbnail with its number in the top-left corner, white on a dark box: readable on any skin."""
    out = tile.copy()
    text = str(number)
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.6, 2)
    cv2.rectangle(out, (0, 0), (w + 8, h + base + 6), (20, 20, 20), thickness=-1)
    cv2.putText(out, text, (4, h + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2, cv2.LINE_AA)
    return out


def thumbnail(rgb: np.ndarray, tile_hw: tuple[int, int] = TILE_HW) -> np.ndarray:
    """The image cropped to the tile's aspect around its centre (the models' own crop) and resized: no distortion,
    no border."""
    from derm.pipeline import center_crop_to_aspect  # the app has loaded it by the time it shows similar cases

    th, tw = tile_hw
    return cv2.resize(center_crop_to_aspect(rgb, tw / th), (tw, th), interpolation=cv2.INTER_AREA)


def case_strip(paths: Sequence[str], tile_hw: tuple[int, int] = TILE_HW) -> np.ndarray:
    """The images in one row, numbered 1, 2, ... in the given order, as one RGB uint8 array."""
    th, tw = tile_hw
    if not paths:
        return np.full((th, tw, 3), 255, np.uint8)
    strip = np.full((th, len(paths) * (tw + GAP) - GAP, 3), 255, np.uint8)
    for i, path in enumerate(paths):
        strip[:, i * (tw + GAP):i * (tw + GAP) + tw] = numbered(thumbnail(load_image(path), tile_hw), i + 1)
    return strip


def case_strip_jpeg(paths: Sequence[str], tile_hw: tuple[int, int] = TILE_HW, quality: int = 88) -> bytes:
    """case_strip as JPEG bytes: what the app sends the browser (a few tens of kB for 8 cases)."""
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(case_strip(paths, tile_hw), cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("could not encode the strip of similar cases as JPEG")
    return encoded.tobytes()
