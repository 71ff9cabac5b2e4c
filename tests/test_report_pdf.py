"""What a result is saved as: the zip's result.json (with the similar cases' vote and the Grad-CAM's
class and slot) and the one-page A4 PDF report, from the library, `python -m derm report` and the
Diagnose page's download buttons; on tiny real weights and shipped HAM10000 images."""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile
from pathlib import Path

import pytest
from pypdf import PdfReader

from derm import data, report, report_pdf
from derm.classes import CLASSES, FULL_NAMES
from derm.gate.domain import REASONS, GateDecision
from derm.imageio import load_image
from derm.pipeline import Predictor
from derm.retrieval import similar

REPO = Path(__file__).resolve().parent.parent
GALLERY_IMAGES = 40
A4_POINTS = (595.3, 841.9)


@pytest.fixture(scope="module")
def predictor(tiny_weights) -> Predictor:
    return Predictor(tiny_weights)


@pytest.fixture(scope="module")
def analysed(predictor, original_image):
    rgb = load_image(original_image)
    return rgb, predictor.analyse(rgb)


@pytest.fixture(scope="module")
def found(predictor, analysed, tmp_path_factory) -> similar.SimilarCases:
    """The similar cases of the analysed image among the first shipped test images."""
    rgb, result = analysed
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(data.CACHE_ENV, str(tmp_path_factory.mktemp("cache")))
        gallery = similar.build_gallery(predictor, data.ImageSource(data.TEST_SUBSET_DIR, False), GALLERY_IMAGES)
    return similar.find_similar(gallery, similar.query_for(predictor, rgb, result.features), similar.SimilarConfig())


def pdf_text(payload: bytes) -> tuple[PdfReader, str]:
    """The parsed PDF and its text with runs of white space (line breaks of wrapped lines) as one space."""
    reader = PdfReader(io.BytesIO(payload))
    return reader, " ".join(" ".join(page.extract_text() for page in reader.pages).split())


def assert_one_a4_page(reader: PdfReader) -> None:
    assert len(reader.pages) == 1
    box = reader.pages[0].mediabox
    assert (float(box.width), float(box.height)) == pytest.approx(A4_POINTS, abs=0.5)


# ----------------------------------------------------------------------------- result.json


def test_result_json_carries_the_similar_vote_and_names_the_gradcam_class_and_slot(predictor, analysed, found):
    rgb, result = analysed
    explained = next(c for c in CLASSES if c != result.label)
    choice = report.GradcamChoice.of(predictor, explained)
    payload = report.result_zip(result, {"input": rgb}, {"image": "x.jpg"}, found, choice)
    with zipfile.ZipFile(io.BytesIO(payload)) as archive:
        record = json.loads(archive.read("result.json"))
    slot = predictor.routing[explained]
    assert record["gradcam"] == {"class": explained, "class_name": FULL_NAMES[explained], "slot": slot,
                                 "networks": predictor.members[slot]}
    cases = record["similar_cases"]
    assert cases["k"] == found.k and cases["label"] == found.label
    assert cases["vote"] == pytest.approx(found.vote) and sum(cases["vote"].values()) == pytest.approx(1.0)
    assert cases["agrees_with_ensemble"] == (found.label == result.label)
    assert [c["image_id"] for c in cases["cases"]] == list(found.cases["image_id"])
    assert {c["dx"] for c in cases["cases"]} <= set(CLASSES)


def test_a_gradcam_of_a_chosen_model_names_that_model():
    class Routed:  # what GradcamChoice reads of a Predictor: the routing and the slots' members
        routing = {c: "resnet18" for c in CLASSES}
        members = {"resnet18": ["resnet18", "resnet18_2"], "resnet50": ["resnet50"]}

    assert report.GradcamChoice.of(Routed(), "MEL").networks == ("resnet18", "resnet18_2")
    assert report.GradcamChoice.of(Routed(), "MEL", "resnet50").record()["slot"] == "resnet50"
    assert report.GradcamChoice.of(Routed(), "MEL", "resnet18_2").networks == ("resnet18_2",)


def test_without_similar_cases_or_gradcam_the_record_says_so(analysed):
    _, result = analysed
    record = report.result_record(result)
    assert record["similar_cases"] is None and record["gradcam"] is None


# ----------------------------------------------------------------------------- the PDF


def test_the_pdf_is_one_a4_page_with_the_diagnosis_warnings_version_and_disclaimer(predictor, analysed, found):
    rgb, result = analysed
    inputs = report_pdf.inputs_for(predictor, rgb, "lesion.jpg", result)
    inputs.similar = found
    reader, text = pdf_text(report_pdf.build_pdf(inputs))
    assert_one_a4_page(reader)
    assert f"Most likely: {FULL_NAMES[result.label]} ({result.label}), {result.confidence:.0%}" in text
    assert "not a medical device" in text and "lesion.jpg" in text
    assert all(FULL_NAMES[c] in text for c in CLASSES)
    assert report.weights_version(predictor.weights_dir) in text
    assert f"Grad-CAM of {predictor.routing[result.label]}" in text and f"for {result.label}" in text
    assert f"Vote of the {found.k} most similar" in text
    assert "Largest diameter" in text and f"{result.lesion['diameter_px']:.0f} px" in text
    for warning in result.warnings:
        assert " ".join(warning.split()) in text
    assert len(reader.pages[0].images) == 3  # the image, the outline, the Grad-CAM


def test_a_refused_image_leads_with_its_reason_and_many_warnings_stay_on_one_page(predictor, analysed):
    rgb, result = analysed
    small = GateDecision(False, 0.2, 3.0, "small", REASONS["small"].format(width=8, height=8))
    refused = dataclasses.replace(result, domain=small, warnings=[f"Warning {i}: " + "words " * 40 for i in range(25)])
    inputs = report_pdf.inputs_for(predictor, rgb, "tiny.png", refused)
    reader, text = pdf_text(report_pdf.build_pdf(inputs))
    assert_one_a4_page(reader)
    refusal = text.index("Refused by the domain gate: the image is too small. At 8x8 pixels")
    assert refusal < text.index("Unreliable guess:") < text.index("Warning 24:")


def test_report_writes_a_pdf_per_image_and_one_line_per_bad_file(tiny_weights, original_image, tmp_path, capsys):
    from derm.cli import main

    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff not really a JPEG")
    out = tmp_path / "reports"
    assert main(["report", str(original_image), str(corrupt), "--out", str(out), "--weights", str(tiny_weights)]) == 1
    captured = capsys.readouterr()
    [line] = captured.err.strip().splitlines()
    assert "corrupt.jpg" in line
    [written] = sorted(out.iterdir())
    assert written.name == f"{original_image.stem}-report.pdf" and str(written) in captured.out
    reader, text = pdf_text(written.read_bytes())
    assert_one_a4_page(reader)
    assert "Most likely:" in text and "not a medical device" in text


# ----------------------------------------------------------------------------- the Diagnose page


def test_the_diagnose_page_offers_the_zip_and_the_pdf(tiny_weights, original_image, tmp_path, monkeypatch):
    from streamlit.runtime.media_file_manager import MediaFileManager
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("DERM_WEIGHTS", str(tiny_weights))
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path / "no-dataset"))  # the gallery: the shipped test split
    monkeypatch.setenv(similar.GALLERY_LIMIT_ENV, str(GALLERY_IMAGES))
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "cache"))
    (tmp_path / "no-dataset").mkdir()
    downloads = {}  # file name -> the deferred callable a click would run
    register = MediaFileManager.add_deferred

    def recording(self, data_callable, mimetype, coordinates, file_name=None, **kwargs):
        downloads[file_name] = data_callable
        return register(self, data_callable, mimetype, coordinates, file_name, **kwargs)

    monkeypatch.setattr(MediaFileManager, "add_deferred", recording)
    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=120)
    at.run()
    at.file_uploader(key="upload").set_value((original_image.name, original_image.read_bytes(), "image/jpeg")).run()
    for build in [b for b in at.button if b.key and b.key.startswith("similar_build_")]:
        build.click().run()
    assert not at.exception, at.exception
    labels = [b.label for b in at.get("download_button")]
    assert labels == ["Download result (zip: JSON, CSV, overlays)", "Download report (PDF, one page)"]
    [result] = at.session_state["analyses"].values()
    with zipfile.ZipFile(io.BytesIO(downloads[f"{original_image.stem}-analysis.zip"]())) as archive:
        record = json.loads(archive.read("result.json"))
    assert record["gradcam"]["class"] == result.label and record["gradcam"]["slot"] == result.source[result.label]
    assert record["similar_cases"]["k"] > 0 and record["similar_cases"]["label"] in CLASSES
    assert record["weights_version"] == report.weights_version(tiny_weights)
    reader, text = pdf_text(downloads[f"{original_image.stem}-report.pdf"]())
    assert_one_a4_page(reader)
    assert f"{FULL_NAMES[result.label]} ({result.label})" in text and "Vote of the" in text
