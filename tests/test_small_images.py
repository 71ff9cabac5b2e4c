"""A tiny image is refused for its size, and the size is the first thing said: in the gate's verdict,
on the Diagnose page and in the command line's warnings (not 'blank, flat, noise or a plain pattern')."""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from derm.gate import domain as gate
from derm.data import TEST_SUBSET_DIR

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "weights"


def shrunk_lesion(width: int, height: int) -> np.ndarray:
    """A real test-split lesion squashed to width x height, as a user's thumbnail would be."""
    path = sorted((TEST_SUBSET_DIR / "images").glob("*.jpg"))[0]
    rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)


def png_bytes(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def shipped_predictor():
    from derm.pipeline import Predictor

    return Predictor(SHIPPED)


def test_a_verdict_on_a_tiny_image_names_its_size_whatever_the_statistics_said():
    accepted = gate.GateDecision(True, 0.9, 0.5, "dermoscopic", None)
    blank = gate.GateDecision(False, 0.01, 3.0, "blank", gate.REASONS["blank"])
    for decision in (accepted, blank):
        small = gate.judged_at_size(decision, (8, 8))
        assert not small.in_domain and small.kind == "small"
        assert small.reason.startswith("At 8x8 pixels") and "blank" not in small.reason
        assert small.probability == decision.probability  # the gate's numbers stay for the curious
    assert gate.judged_at_size(accepted, (450, 600)) is accepted
    assert gate.judged_at_size(blank, (gate.MIN_JUDGED_SIDE, 600)) is blank


@pytest.mark.parametrize("size", [(8, 8), (16, 12), (40, 30)])
def test_the_shipped_gate_refuses_a_shrunk_lesion_for_its_size(shipped_predictor, size):
    decision = shipped_predictor.check_domain([shrunk_lesion(*size)])[0]
    assert not decision.in_domain and decision.kind == "small"
    assert decision.reason.startswith(f"At {size[0]}x{size[1]} pixels")
    full = shipped_predictor.check_domain([shrunk_lesion(200, 150)])[0]
    assert full.in_domain  # the same lesion at the models' own size is accepted


def test_predict_says_the_size_first(tmp_path, capsys):
    from derm.cli import main

    tiny = tmp_path / "tiny.png"
    tiny.write_bytes(png_bytes(shrunk_lesion(8, 8)))
    assert main(["predict", str(tiny), "--weights", str(SHIPPED), "--format", "json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["in_domain"] is False and row["warnings"].startswith("At 8x8 pixels")


def test_the_diagnose_page_says_the_size_first(monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("DERM_WEIGHTS", str(SHIPPED))
    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=120)
    at.run()
    at.radio(key="source").set_value("Upload a photo").run()
    at.file_uploader(key="upload").set_value(("thumb.png", png_bytes(shrunk_lesion(8, 8)), "image/png")).run()
    assert not at.exception, at.exception
    [error] = at.error
    assert error.value.startswith("**Not analysed: the image is too small.** At 8x8 pixels")
    assert "blank" not in error.value and "does not look like" not in error.value
