"""scripts/try_lesion_scale.py: the geometry behind docs/tried.md's lesion-scale experiment."""

import importlib.util

import numpy as np
import pytest

from conftest import REPO

_spec = importlib.util.spec_from_file_location("try_lesion_scale", REPO / "scripts" / "try_lesion_scale.py")
try_lesion_scale = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(try_lesion_scale)


def _skin_with_square(h: int, w: int, side: int) -> np.ndarray:
    rgb = np.full((h, w, 3), 200, np.uint8)
    y0, x0 = (h - side) // 2, (w - side) // 2
    rgb[y0:y0 + side, x0:x0 + side] = 60
    return rgb


def _run_through_centre(line: np.ndarray) -> int:
    """Length of the run of True that contains the middle element."""
    mid = len(line) // 2
    if not line[mid]:
        return 0
    start, end = mid, mid
    while start > 0 and line[start - 1]:
        start -= 1
    while end < len(line) - 1 and line[end + 1]:
        end += 1
    return end - start + 1


def test_dark_bars_at_the_edges_are_trimmed_and_nothing_else():
    rgb = _skin_with_square(120, 160, 40)
    rgb[:5] = 0
    rgb[-3:] = 2
    trimmed = try_lesion_scale.trim_dark_edges(rgb)
    assert trimmed.shape == (112, 160, 3)
    assert try_lesion_scale.trim_dark_edges(trimmed).shape == trimmed.shape  # the dark lesion stays


def test_trimming_stops_at_its_share_of_each_side():
    black = np.zeros((100, 100, 3), np.uint8)
    assert try_lesion_scale.trim_dark_edges(black, most=0.1).shape == (80, 80, 3)


def test_zoom_one_keeps_a_four_by_three_image_and_zoom_two_halves_the_lesion():
    rgb = _skin_with_square(120, 160, 40)
    same = try_lesion_scale.zoom_out(rgb, 1.0)
    assert same.shape == rgb.shape
    assert np.abs(same.astype(int) - rgb).max() <= 1
    far = try_lesion_scale.zoom_out(rgb, 2.0)
    dark = far.mean(axis=2) < 130
    assert far.shape == rgb.shape
    assert _run_through_centre(dark[60]) == pytest.approx(20, abs=2)  # the 40-pixel lesion now spans about 20
    assert _run_through_centre(dark[:, 80]) == pytest.approx(20, abs=2)
    assert far[30, 30].mean() > 150  # beyond the image: reflected skin, not a black border


def test_a_wide_image_gives_a_four_by_three_frame_from_its_own_pixels():
    rgb = _skin_with_square(100, 150, 30)  # 3:2, like derm7pt
    frame = try_lesion_scale.zoom_out(rgb, 150 / 133)
    assert frame.shape[:2] == (100, 133)
    assert frame.mean(axis=2).min() < 100 and frame[:, 0].mean() > 150  # the lesion in, skin at the side


@pytest.mark.parametrize("share,expected", [(0.1, 1.0), (0.37, 1.0), (0.37 * 1.21, 1.1), (0.9, 1.5)])
def test_zoom_factor_only_zooms_out_large_lesions_and_is_capped(share, expected):
    assert try_lesion_scale.zoom_factor(share, 0.37, 1.5) == pytest.approx(expected)
