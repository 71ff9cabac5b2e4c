"""The similar cases' numbered strip of thumbnails."""

import cv2
import numpy as np

from derm.retrieval.strip import GAP, TILE_HW, case_strip, case_strip_jpeg, thumbnail


def write(path, rgb):
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return str(path)


def test_the_strip_holds_each_case_in_order_with_its_number(tmp_path):
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    paths = [write(tmp_path / f"{i}.png", np.full((150, 200, 3), c, np.uint8)) for i, c in enumerate(colours)]
    strip = case_strip(paths)
    th, tw = TILE_HW
    assert strip.shape == (th, 3 * tw + 2 * GAP, 3) and strip.dtype == np.uint8
    for i, colour in enumerate(colours):
        tile = strip[:, i * (tw + GAP):i * (tw + GAP) + tw]
        assert np.abs(tile[th - 10, tw - 10].astype(int) - colour).max() <= 2  # its own image, in order
        corner = tile[:20, :20].reshape(-1, 3)
        assert (corner.max(axis=1) > 240).any() and (corner.max(axis=1) < 40).any()  # a white number on a dark box
    assert (strip[:, tw:tw + GAP] == 255).all()  # a white gap between cases


def test_a_thumbnail_is_cropped_to_the_tile_not_squeezed():
    wide = np.zeros((100, 400, 3), np.uint8)
    wide[:, 150:250] = 255  # a white square band in the middle of a wide image
    tile = thumbnail(wide, (120, 160))
    assert tile.shape == (120, 160, 3)
    # a 4:3 crop of the centre: the band (100 of the crop's 133 columns) fills most of the tile
    assert 0.6 < (tile[60] > 128).all(axis=1).mean() < 0.9


def test_no_cases_give_a_blank_tile():
    assert (case_strip([]) == 255).all()


def test_the_jpeg_decodes_to_the_strip(tmp_path):
    paths = [write(tmp_path / f"{i}.png", np.full((150, 200, 3), 60 * i, np.uint8)) for i in range(4)]
    decoded = cv2.imdecode(np.frombuffer(case_strip_jpeg(paths), np.uint8), cv2.IMREAD_COLOR)
    expected = cv2.cvtColor(case_strip(paths), cv2.COLOR_RGB2BGR)
    assert decoded.shape == expected.shape and np.abs(decoded.astype(int) - expected).mean() < 3
