import json

import numpy as np
import pytest
import torch
from torch import nn

from derm.maskclean import CHOSEN, NONE, CleanConfig, clean, fill_holes
from derm.pipeline import SegmenterModel

H, W = 450, 600


def vignette_scene() -> tuple[np.ndarray, np.ndarray]:
    """A dermatoscope-like photo: skin inside a circular field of view, black outside it (the
    corners), and a dark central lesion with a lighter hole; plus the lesion's true mask."""
    yy, xx = np.mgrid[:H, :W]
    rgb = np.empty((H, W, 3), np.uint8)
    rgb[:] = (215, 165, 150)  # skin
    outside = (yy - H / 2) ** 2 + (xx - W / 2) ** 2 > (0.56 * W) ** 2 / 1.0
    rgb[outside] = (6, 6, 6)
    lesion = (yy - 235) ** 2 / 90**2 + (xx - 290) ** 2 / 120**2 <= 1
    rgb[lesion] = (90, 55, 40)
    hole = (yy - 235) ** 2 + (xx - 300) ** 2 <= 18**2
    rgb[hole] = (200, 160, 150)  # regression: a pale spot inside the lesion
    return rgb, lesion


class DarkIsLesion(nn.Module):
    """A stand-in U-Net that, like the real one on a vignetted image, calls every dark pixel lesion."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 40 * (0.45 - x.mean(1, keepdim=True))


def segmenter(cleaning: CleanConfig) -> SegmenterModel:
    return SegmenterModel(DarkIsLesion(), (96, 128), {"mean": [0, 0, 0], "std": [1, 1, 1]}, 0.5, (), False, cleaning)


def corners(mask: np.ndarray, size: int = 40) -> int:
    return int(mask[:size, :size].sum() + mask[:size, -size:].sum() + mask[-size:, :size].sum() + mask[-size:, -size:].sum())


def test_black_corners_are_not_lesion_and_holes_are_filled():
    rgb, truth = vignette_scene()
    raw, _ = segmenter(NONE).mask(rgb)
    assert corners(raw) > 1000  # the stand-in marks the vignette, as a U-Net without cleaning does on real images
    cleaned, prob = segmenter(CHOSEN).mask(rgb)
    assert cleaned.shape == (H, W) and prob.shape == (H, W)
    assert corners(cleaned) == 0
    assert cleaned[235, 300]  # the hole is filled
    inter = (cleaned & truth).sum()
    assert 2 * inter / (cleaned.sum() + truth.sum()) > 0.95


def test_a_rim_around_the_field_loses_to_a_smaller_central_lesion():
    yy, xx = np.mgrid[:H, :W]
    r = np.hypot(yy - H / 2, xx - W / 2)
    rim = (r > 215) & (r < 235)  # a ring of the field of view's edge: big, with a central centroid
    blob = r < 70
    mask = rim | blob
    assert rim.sum() > blob.sum()
    assert np.array_equal(clean(mask, CleanConfig(rule="central")), blob)
    assert np.array_equal(clean(mask, CleanConfig(rule="largest")), rim)


def test_border_components_are_dropped_only_when_an_inner_one_exists():
    mask = np.zeros((H, W), bool)
    mask[:, :150] = True  # a large lesion cut by the image's left edge
    config = CleanConfig(rule="largest", drop_border=True)
    assert np.array_equal(clean(mask, config), mask)
    mask[200:260, 300:360] = True  # an inner component
    assert clean(mask, config)[230, 330] and not clean(mask, config)[:, :150].any()


def test_empty_and_full_masks_survive_and_none_changes_nothing():
    for mask in (np.zeros((H, W), bool), np.ones((H, W), bool)):
        assert np.array_equal(clean(mask, CHOSEN), mask)
    rng = np.random.default_rng(0)
    noisy = rng.random((H, W)) > 0.7
    assert np.array_equal(clean(noisy, NONE), noisy)


def test_fill_holes_leaves_bays_open():
    mask = np.zeros((100, 100), bool)
    mask[20:80, 20:80] = True
    mask[40:50, 40:50] = False  # a hole
    mask[45:55, 70:80] = False  # a bay open to the outside
    filled = fill_holes(mask)
    assert filled[45, 45] and not filled[50, 75]


def test_config_round_trips_and_old_manifests_mean_no_cleaning():
    assert CleanConfig.from_dict(json.loads(json.dumps(CHOSEN.to_dict()))) == CHOSEN
    assert CleanConfig.from_dict(None) == NONE and CleanConfig.from_dict({}) == NONE
    assert CleanConfig.from_dict({"rule": "central", "from_a_later_version": 1}).rule == "central"
    with pytest.raises(ValueError):
        CleanConfig(rule="biggest")
    assert CHOSEN.describe() != "none" and NONE.describe() == "none"
