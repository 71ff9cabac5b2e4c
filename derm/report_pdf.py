"""One analysis on one A4 page (PDF): the image, the lesion outline, the Grad-CAM of the top class, the
probabilities, the measurements, the warnings, the weights' version and the disclaimer.

A page a reader can file or print beside the image, laid out with reportlab's platypus; the fonts are
the Bitstream Vera TrueType fonts that ship inside reportlab, so any character of the texts (π, ², an
accented file name) prints and the text stays searchable and extractable.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from reportlab.graphics.shapes import Drawing, Rect
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.platypus import Image, KeepInFrame, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle
from xml.sax.saxutils import escape

from derm import __version__, report
from derm.classes import FULL_NAMES

if TYPE_CHECKING:  # not at run time: the page and the CLI import this module before any model is needed
    from derm.pipeline import Predictor, Result
    from derm.retrieval.similar import SimilarCases

DISCLAIMER = ("Research demo, not a medical device and not a diagnosis. These models were trained on one public "
              "dataset of dermatoscopic images and are often wrong. Do not use this report for medical decisions: "
              "show any lesion that worries you to a doctor.")
MARGIN = 14 * mm
FRAME_PADDING = 6  # points: the padding of SimpleDocTemplate's frame on every side
FONT, BOLD = "DermVera", "DermVeraBold"
IMAGE_SIDE_PX = 600  # images are embedded as JPEG at most this wide: sharp at print size, a small file
BAR_COLOUR = colors.HexColor("#2f6f8f")
WARN_COLOUR = colors.HexColor("#8a5a00")
REFUSED_COLOUR = colors.HexColor("#b00020")


@dataclass
class ReportInputs:
    """Everything one page shows; the caller computes it (the app from its caches, the CLI afresh)."""

    name: str                              # the image's file name, for the title
    rgb: np.ndarray                        # the decoded image (RGB uint8)
    result: "Result"
    heat: np.ndarray | None                # Grad-CAM of the top class at the image's size (None: not computed)
    gradcam: report.GradcamChoice | None   # which class and slot `heat` explains
    weights_version: str                   # report.weights_version(...)
    models: str                            # the networks, e.g. "resnet18, resnet50 + U-Net"
    similar: "SimilarCases | None" = None  # the similar confirmed cases' vote, when looked up
    created: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


def inputs_for(predictor: "Predictor", rgb: np.ndarray, name: str, result: Result | None = None) -> ReportInputs:
    """Analyse (unless `result` is given) and explain the top class: what the command line reports."""
    result = result if result is not None else predictor.analyse(rgb)
    return ReportInputs(name=name, rgb=rgb, result=result, heat=predictor.gradcam(rgb, result.label),
                        gradcam=report.GradcamChoice.of(predictor, result.label),
                        weights_version=report.weights_version(predictor.weights_dir),
                        models=models_line(predictor))


def models_line(predictor: "Predictor") -> str:
    return ", ".join(predictor.classifiers) + (" + U-Net" if predictor.segmenter is not None else "")


# ----------------------------------------------------------------------------- fonts and styles


def register_fonts() -> None:
    """reportlab's own TrueType fonts (registered once per process)."""
    if FONT in pdfmetrics.getRegisteredFontNames():
        return
    pdfmetrics.registerFont(TTFont(FONT, "Vera.ttf"))
    pdfmetrics.registerFont(TTFont(BOLD, "VeraBd.ttf"))


def styles() -> dict[str, ParagraphStyle]:
    body = ParagraphStyle("body", fontName=FONT, fontSize=9.5, leading=12.5)
    return {
        "title": ParagraphStyle("title", parent=body, fontName=BOLD, fontSize=15, leading=19, spaceAfter=2),
        "headline": ParagraphStyle("headline", parent=body, fontName=BOLD, fontSize=13, leading=17, spaceBefore=6),
        "section": ParagraphStyle("section", parent=body, fontName=BOLD, fontSize=10.5, leading=14, spaceBefore=9,
                                  spaceAfter=3),
        "body": body,
        "small": ParagraphStyle("small", parent=body, fontSize=7.5, leading=9.5, textColor=colors.HexColor("#444444")),
        "disclaimer": ParagraphStyle("disclaimer", parent=body, fontName=BOLD, fontSize=9, leading=12,
                                     borderColor=REFUSED_COLOUR, borderWidth=0.8, borderPadding=4,
                                     spaceBefore=4, spaceAfter=6),
        "warning": ParagraphStyle("warning", parent=body, textColor=WARN_COLOUR, leftIndent=8, bulletIndent=0),
        "refused": ParagraphStyle("refused", parent=body, fontName=BOLD, fontSize=10.5, leading=14,
                                  textColor=REFUSED_COLOUR, spaceBefore=4),
    }


def text(value: str) -> str:
    """Plain text made safe for a Paragraph's mini-markup."""
    return escape(str(value))


# ----------------------------------------------------------------------------- the parts of the page


def jpeg_image(rgb: np.ndarray, width: float) -> Image:
    """The picture as an embedded JPEG, `width` points wide, its aspect kept."""
    height_px, width_px = rgb.shape[:2]
    if width_px > IMAGE_SIDE_PX:
        rgb = cv2.resize(rgb, (IMAGE_SIDE_PX, round(height_px * IMAGE_SIDE_PX / width_px)),
                         interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 88])
    if not ok:
        raise ValueError("could not encode the image as JPEG")
    return Image(io.BytesIO(encoded.tobytes()), width=width, height=width * height_px / width_px)


def image_row(inputs: ReportInputs, width: float, st: dict[str, ParagraphStyle]) -> Table:
    """The image, the lesion outline and the Grad-CAM side by side, each with its caption."""
    from derm.explain import overlay_heatmap, overlay_mask

    panels = [(inputs.rgb, "The image")]
    if inputs.result.mask is not None:
        panels.append((overlay_mask(inputs.rgb, inputs.result.mask), "U-Net lesion outline"))
    if inputs.heat is not None and inputs.gradcam is not None:
        choice = inputs.gradcam
        averaged = f" (mean of {' and '.join(choice.networks)})" if len(choice.networks) > 1 else ""
        panels.append((overlay_heatmap(inputs.rgb, inputs.heat, 0.45),
                       f"Grad-CAM of {choice.slot}{averaged} for {choice.class_code}: red marks what raised "
                       "that score"))
    gap = 4 * mm
    column = (width - gap * (len(panels) - 1)) / len(panels)
    pictures = [jpeg_image(rgb, column) for rgb, _ in panels]
    captions = [Paragraph(text(caption), st["small"]) for _, caption in panels]
    table = Table([pictures, captions], colWidths=[column + gap] * (len(panels) - 1) + [column])
    table.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("LEFTPADDING", (0, 0), (-1, -1), 0),
                               ("RIGHTPADDING", (0, 0), (-1, -1), gap), ("RIGHTPADDING", (-1, 0), (-1, -1), 0),
                               ("TOPPADDING", (0, 0), (-1, -1), 1)]))
    return table


def bar(probability: float, width: float, height: float = 7) -> Drawing:
    drawing = Drawing(width, height)
    drawing.add(Rect(0, 0, width, height, fillColor=colors.HexColor("#e8eef2"), strokeColor=None))
    drawing.add(Rect(0, 0, max(0.0, min(1.0, probability)) * width, height, fillColor=BAR_COLOUR, strokeColor=None))
    return drawing


def probability_table(result: Result, width: float, st: dict[str, ParagraphStyle]) -> Table:
    """The seven ensemble probabilities, most likely first, each with a bar."""
    rows = [[Paragraph(f"<b>{text(r['class'])}</b>", st["body"]), Paragraph(text(r["name"]), st["body"]),
             Paragraph(f"{r['probability']:.1%}", st["body"]), bar(r["probability"], 0.3 * width)]
            for _, r in report.probability_table(result).iterrows()]
    table = Table(rows, colWidths=[0.1 * width, 0.48 * width, 0.12 * width, 0.3 * width])
    table.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "MIDDLE"), ("TOPPADDING", (0, 0), (-1, -1), 2),
                               ("BOTTOMPADDING", (0, 0), (-1, -1), 2), ("LEFTPADDING", (0, 0), (-1, -1), 0),
                               ("LINEBELOW", (0, 0), (-1, -2), 0.25, colors.HexColor("#dddddd"))]))
    return table


def measurement_table(lesion: dict, width: float, st: dict[str, ParagraphStyle]) -> Table:
    frame = report.measurement_table(lesion)
    rows = [[Paragraph(f"<b>{text(m)}</b>", st["body"]), Paragraph(text(v), st["body"]),
             Paragraph(text(w), st["small"])] for m, v, w in frame.itertuples(index=False)]
    table = Table(rows, colWidths=[0.3 * width, 0.3 * width, 0.4 * width])
    table.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("TOPPADDING", (0, 0), (-1, -1), 2),
                               ("BOTTOMPADDING", (0, 0), (-1, -1), 2), ("LEFTPADDING", (0, 0), (-1, -1), 0),
                               ("LINEBELOW", (0, 0), (-1, -2), 0.25, colors.HexColor("#dddddd"))]))
    return table


def headline(result: Result, st: dict[str, ParagraphStyle]) -> list:
    """The answer, or first the gate's refusal and then the answer marked as an unreliable guess."""
    lead = "Most likely" if result.in_domain else "Unreliable guess"
    line = Paragraph(f"{lead}: {text(FULL_NAMES[result.label])} ({result.label}), {result.confidence:.0%}",
                     st["headline"])
    if result.in_domain:
        return [line]
    why = ("the image is too small" if result.domain.kind == "small" else
           "this does not look like a dermatoscopic image of a skin lesion")
    return [Paragraph(f"Refused by the domain gate: {why}. {text(result.domain.reason)}", st["refused"]),
            Paragraph("Every number below comes from models that were not made for this image: treat all of it as "
                      "meaningless.", st["body"]), line]


def similar_line(found: "SimilarCases", label: str, st: dict[str, ParagraphStyle]) -> Paragraph:
    verdict = "agrees with the ensemble" if found.agrees_with(label) else f"differs from the ensemble's {label}"
    return Paragraph(f"Vote of the {found.k} most similar confirmed HAM10000 cases (weighted by similarity): "
                     f"<b>{text(FULL_NAMES[found.label])} ({found.label})</b>, {found.vote[found.label]:.0%}: "
                     f"{verdict}.", st["body"])


def story(inputs: ReportInputs, width: float) -> list:
    """Every flowable of the page, top to bottom."""
    st = styles()
    result = inputs.result
    parts: list = [Paragraph(f"derm: analysis of {text(inputs.name)}", st["title"]),
                   Paragraph(text(DISCLAIMER), st["disclaimer"]), *headline(result, st),
                   Spacer(1, 3 * mm), image_row(inputs, width, st)]
    parts += [Paragraph("Ensemble probabilities", st["section"]), probability_table(result, width, st)]
    if inputs.similar is not None:
        parts.append(similar_line(inputs.similar, result.label, st))
    if result.lesion is not None:
        parts += [Paragraph("Lesion measurements (from the U-Net outline)", st["section"]),
                  measurement_table(result.lesion, width, st), Paragraph(text(report.NO_SCALE_NOTE), st["small"])]
    parts.append(Paragraph("Warnings", st["section"]))
    parts += [Paragraph(text(w), st["warning"], bulletText="•") for w in result.warnings] or \
        [Paragraph("None.", st["body"])]
    created = inputs.created.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts += [Spacer(1, 4 * mm),
              Paragraph(f"Models: {text(inputs.models)}; weights {text(inputs.weights_version)}; derm {__version__}. "
                        f"Created {created}. How good the models are, on what, and when not to trust them: "
                        "MODEL_CARD.md.", st["small"])]
    return parts


def build_pdf(inputs: ReportInputs) -> bytes:
    """The one-page A4 report as PDF bytes; content that would not fit is scaled down, never cut off
    or carried onto a second page."""
    register_fonts()
    buffer = io.BytesIO()
    document = SimpleDocTemplate(buffer, pagesize=A4, leftMargin=MARGIN, rightMargin=MARGIN, topMargin=MARGIN,
                                 bottomMargin=MARGIN, title=f"derm: analysis of {inputs.name}", author="derm",
                                 subject=DISCLAIMER)
    width, height = document.width - 2 * FRAME_PADDING, document.height - 2 * FRAME_PADDING
    document.build([KeepInFrame(width, height - 1, story(inputs, width), mode="shrink")])
    return buffer.getvalue()


def report_file_name(image_path: str | Path) -> str:
    """<stem>-report.pdf: what the command line writes and the page offers."""
    return f"{Path(image_path).stem}-report.pdf"
