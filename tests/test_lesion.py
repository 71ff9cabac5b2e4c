import numpy as np
import pytest

from derm import lesion


def disc(h=200, w=300, cy=100, cx=150, r=40):
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def test_disc_is_symmetric_compact_and_measured_in_pixels():
    rgb = np.full((200, 300, 3), 90, np.uint8)
    m = lesion.measure(rgb, disc())
    assert m["asymmetry"] < 0.03
    assert m["compactness"] == pytest.approx(1.0, abs=0.15)
    assert m["solidity"] > 0.97
    assert m["diameter_px"] == pytest.approx(80, abs=3)
    assert m["area_fraction"] == pytest.approx(np.pi * 40**2 / (200 * 300), rel=0.03)


def test_irregular_shape_scores_worse_than_a_disc():
    blob = disc()
    blob[100:104, 150:260] = True  # a spike
    blob |= disc(cx=200, cy=120, r=20)  # a lobe
    rgb = np.full((200, 300, 3), 90, np.uint8)
    regular, irregular = lesion.measure(rgb, disc()), lesion.measure(rgb, blob)
    assert irregular["asymmetry"] > regular["asymmetry"] + 0.05
    assert irregular["compactness"] > regular["compactness"]


def test_colours_are_counted_inside_the_mask_only():
    rgb = np.zeros((100, 100, 3), np.uint8)
    rgb[:] = lesion.DERMOSCOPIC_COLOURS["white"]  # skin outside is ignored
    mask = np.zeros((100, 100), bool)
    mask[20:80, 20:50] = True
    mask[20:80, 50:80] = True
    rgb[20:80, 20:50] = lesion.DERMOSCOPIC_COLOURS["dark brown"]
    rgb[20:80, 50:80] = lesion.DERMOSCOPIC_COLOURS["blue-grey"]
    assert sorted(lesion.measure(rgb, mask)["colours"]) == ["blue-grey", "dark brown"]


def test_empty_mask_gives_zeros_not_errors():
    m = lesion.measure(np.zeros((50, 50, 3), np.uint8), np.zeros((50, 50), bool))
    assert m["area_px"] == 0 and m["colour_count"] == 0 and m["diameter_px"] == 0
