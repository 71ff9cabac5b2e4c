"""Results as tables and files: one image's analysis (for the page and its download) and the
shipped metrics.json / manifest.json (for the model card), so pages only draw.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pandas as pd

from derm.classes import CLASSES, DESCRIPTIONS, FULL_NAMES

if TYPE_CHECKING:  # not at run time: the app's pages import this module before any model is needed
    from derm.pipeline import Predictor, Result
    from derm.retrieval.similar import SimilarCases

NO_SCALE_NOTE = ("HAM10000 images carry no physical scale, so sizes are in pixels of this image "
                 "(or a share of it), never millimetres.")


# ----------------------------------------------------------------------------- one image


def probability_table(result: Result) -> pd.DataFrame:
    """The seven ensemble probabilities, most likely first, with full names and descriptions."""
    rows = [{"class": c, "name": FULL_NAMES[c], "description": DESCRIPTIONS[c], "probability": p}
            for c, p in result.probabilities.items()]
    return pd.DataFrame(rows).sort_values("probability", ascending=False, kind="stable").reset_index(drop=True)


def model_table(result: Result) -> pd.DataFrame:
    """Per class: how much each slot weighs in the ensemble's score, the ensemble's and each slot's own probability."""
    rows = []
    for c in CLASSES:
        row = {"class": c, "weights": weights_text(result.weights.get(c) or {result.source.get(c, ""): 1.0}),
               "ensemble": result.probabilities[c]}
        row.update({name: probs[c] for name, probs in result.per_model.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def ranked_model_table(result: Result) -> pd.DataFrame:
    """model_table with each class's full name, most likely class first, the slots' mix last: the app's one table
    of probabilities."""
    table = model_table(result)
    table.insert(1, "diagnosis", [FULL_NAMES[c] for c in table["class"]])
    table["weights"] = table.pop("weights")  # last: the probabilities side by side
    return table.sort_values("ensemble", ascending=False, kind="stable").reset_index(drop=True)


def text_bar(p: float, width: int = 10) -> str:
    """A probability as a bar of block characters inside a table cell ('' below half a block)."""
    return "█" * round(min(max(p, 0.0), 1.0) * width)


def markdown_table(frame: pd.DataFrame) -> str:
    """A small table as Markdown, which the app draws as plain HTML: Streamlit's data grid and Arrow tables
    cost each browser about 1.9 MB of JavaScript to parse at its first result, a second of CPU."""
    def cell(value: object) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def weights_text(row: dict[str, float]) -> str:
    """'resnet18 62% · resnet50 38%': a class's mix of slots, largest first, zero weights left out."""
    ranked = sorted(((w, s) for s, w in row.items() if w >= 0.005), reverse=True)
    return " · ".join(f"{s} {w:.0%}" for w, s in ranked)


def combination_caption(result: Result) -> str:
    """How each ensemble score is made, exactly, for the model table's caption."""
    prior = (f", divided by the class's share of the training images to the power {result.prior_correction:g} "
             "(lifts the rare classes)" if result.prior_correction else "")
    return ("Each class's ensemble score is the mix of the slots' scores given in 'weights' (chosen by "
            f"cross-validation on the validation images){prior}; the seven scores are then renormalised to "
            "sum to 100%. A slot's score is the mean of its networks'.")


def measurement_table(lesion: dict) -> pd.DataFrame:
    """The lesion measurements in words a reader can check, with what each number means."""
    colours = ", ".join(lesion["colours"]) or "none detected"
    rows = [
        ("Area", f"{lesion['area_px']:,} px ({lesion['area_fraction']:.1%} of the image)",
         "pixels inside the lesion mask"),
        ("Asymmetry", f"{lesion['asymmetry']:.2f}", "1 - overlap with its mirror image; 0 = symmetric"),
        ("Border irregularity (compactness)", f"{lesion['compactness']:.2f}",
         "perimeter² / (4π·area); 1 = a circle, higher = more ragged"),
        ("Solidity", f"{lesion['solidity']:.2f}", "area / convex-hull area; 1 = no indentations"),
        ("Colours", f"{colours} ({lesion['colour_count']})", "dermoscopic colours covering at least 5% of the lesion"),
        ("Largest diameter", f"{lesion['diameter_px']:.0f} px", "longest distance across the lesion (Feret)"),
    ]
    return pd.DataFrame(rows, columns=["measure", "value", "meaning"])


@dataclass(frozen=True)
class GradcamChoice:
    """Which class a Grad-CAM explains and whose map it is: the ensemble slot that supplies that class's
    score (or the model picked), and the networks whose maps are averaged in it. Saved beside the map,
    since a heat map alone does not say which question it answers."""

    class_code: str
    slot: str
    networks: tuple[str, ...]

    @classmethod
    def of(cls, predictor: "Predictor", class_code: str, model_name: str | None = None) -> "GradcamChoice":
        """The same choice Predictor.gradcam makes for these arguments."""
        slot = model_name or predictor.routing[class_code]
        return cls(class_code, slot, tuple(predictor.members.get(slot, [slot])))

    def record(self) -> dict:
        return {"class": self.class_code, "class_name": FULL_NAMES[self.class_code], "slot": self.slot,
                "networks": list(self.networks)}


def similar_record(found: "SimilarCases | None", label: str) -> dict | None:
    """The similar confirmed cases as saved: the similarity-weighted vote of the k nearest, its answer
    against the ensemble's `label`, and the cases shown (None when they were not looked up)."""
    if found is None:
        return None
    cases = found.cases[["image_id", "dx", "dx_type", "similarity"]]
    return {"k": found.k, "label": found.label, "agrees_with_ensemble": found.agrees_with(label),
            "vote": {c: float(v) for c, v in found.vote.items()},
            "cases": [{**row, "similarity": round(float(row["similarity"]), 4)} for row in cases.to_dict("records")]}


def weights_version(weights_dir: Path) -> str:
    """The code version the weights were exported with and a hash of their manifest.json: two folders
    with the same string hold the same models used the same way."""
    manifest_file = Path(weights_dir) / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    digest = hashlib.sha256(manifest_file.read_bytes()).hexdigest()[:12]
    return f"code {manifest.get('code_version', 'unknown')}, manifest {digest}"


def result_record(result: Result, meta: dict | None = None, similar: "SimilarCases | None" = None,
                  gradcam: GradcamChoice | None = None) -> dict:
    """A JSON-safe summary of one analysis (the mask itself travels as a PNG), with the similar cases'
    vote and the class and slot of the saved Grad-CAM when the caller has them."""
    return {
        **(meta or {}),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "label": result.label,
        "label_name": FULL_NAMES[result.label],
        "confidence": result.confidence,
        "probabilities": result.probabilities,
        "per_model": result.per_model,
        "source": result.source,
        "lesion": result.lesion,
        "warnings": result.warnings,
        "in_domain": result.in_domain,
        "domain": None if result.domain is None else {"probability": result.domain.probability,
                                                       "distance": result.domain.distance,
                                                       "reason": result.domain.reason},
        "seconds": result.seconds,
        "similar_cases": similar_record(similar, result.label),
        "gradcam": None if gradcam is None else gradcam.record(),
        "note": "Research demo, not a diagnosis. " + NO_SCALE_NOTE,
    }


def png_bytes(rgb_or_grey: np.ndarray) -> bytes:
    array = np.asarray(rgb_or_grey)
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".png", array)
    if not ok:
        raise ValueError("could not encode PNG")
    return encoded.tobytes()


def result_zip(result: Result, images: dict[str, np.ndarray], meta: dict | None = None,
               similar: "SimilarCases | None" = None, gradcam: GradcamChoice | None = None) -> bytes:
    """A zip with result.json, the probabilities as CSV, the mask and the given overlay images as PNG;
    `gradcam` names the class and slot of images["gradcam"]."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("result.json", json.dumps(result_record(result, meta, similar, gradcam), indent=2))
        archive.writestr("probabilities.csv", model_table(result).to_csv(index=False))
        if result.mask is not None:
            archive.writestr("mask.png", png_bytes(result.mask.astype(np.uint8) * 255))
        for name, image in images.items():
            archive.writestr(f"{name}.png", png_bytes(image))
    return buffer.getvalue()


# ----------------------------------------------------------------------------- the shipped evaluation


SUMMARY_COLUMNS = ("n", "accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "ece")


def summary_table(metrics: dict, split: str) -> pd.DataFrame:
    """One row per model (ensemble first) with the headline numbers of a split."""
    reports = metrics.get("classifiers", {}).get(split, {})
    names = sorted(reports, key=lambda n: (n != "ensemble", n))
    return pd.DataFrame([{"model": n, **{k: reports[n].get(k) for k in SUMMARY_COLUMNS}} for n in names])


def per_class_table(report: dict) -> pd.DataFrame:
    """Precision, recall, F1, AUC and correct/total per class from a classification report."""
    rows = []
    for c in CLASSES:
        entry = report["per_class"][c]
        rows.append({"class": c, "name": FULL_NAMES[c], "precision": entry["precision"], "recall": entry["recall"],
                     "f1": entry["f1"], "auc": entry.get("auc"), "correct": entry["correct"], "total": entry["support"]})
    return pd.DataFrame(rows)


def segmenter_table(metrics: dict) -> pd.DataFrame:
    """Dice, IoU and the ISIC thresholded Jaccard per split, at the masks' full 600x450."""
    seg = metrics.get("segmenter", {})
    keys = ("n", "dice", "iou", "dice_median", "iou_median", "thresholded_jaccard", "failure_rate")
    return pd.DataFrame([{"split": s, **{k: seg[s].get(k) for k in keys}} for s in ("val", "test") if s in seg])


def models_table(manifest: dict) -> pd.DataFrame:
    """What each shipped network is, which ensemble slot it averages into, and how it was made and is used."""
    rows = []
    slot_of = {m: slot for slot, names in manifest.get("ensemble", {}).get("members", {}).items() for m in names}
    for name, entry in manifest.get("models", {}).items():
        training = entry.get("training", {})
        rows.append({
            "model": name, "slot": slot_of.get(name, name if entry["arch"] != "unet" else None),
            "arch": entry["arch"], "input (h x w)": "x".join(map(str, entry["input_hw"])),
            "colour": entry.get("colour"),
            "temperature": entry.get("temperature"), "TTA": ", ".join(entry.get("tta", [])) or "none",
            "threshold": entry.get("threshold"), "best epoch": training.get("best_epoch"),
            "epochs": training.get("epochs"), "training minutes": round(training.get("seconds", 0) / 60, 1),
            "run": training.get("run"), "code version": training.get("code_version"),
        })
    return pd.DataFrame(rows)


def routing_table(manifest: dict) -> pd.DataFrame:
    """Which slot carries each class in the ensemble (with the networks averaged in it), the whole mix of
    slots for that class, and how common the class was in training."""
    ensemble = manifest.get("ensemble", {})
    counts = ensemble.get("train_class_counts", {})
    total = sum(counts.values()) or 1
    members = ensemble.get("members", {})
    routing = ensemble.get("routing", {})
    weights = ensemble.get("weights") or {c: {routing.get(c, ""): 1.0} for c in CLASSES}
    return pd.DataFrame([{"class": c, "name": FULL_NAMES[c], "model": routing.get(c),
                          "networks": " + ".join(members.get(routing.get(c), [routing.get(c) or ""])),
                          "weights": weights_text(weights.get(c, {})),
                          "train images": counts.get(c), "share": counts.get(c, 0) / total} for c in CLASSES])


def split_counts_table(metrics: dict) -> pd.DataFrame:
    """Images per class (rows) and split (columns), with totals."""
    counts = metrics.get("split_counts", {})
    if not counts:
        return pd.DataFrame()
    table = pd.DataFrame(counts).reindex(index=list(CLASSES)).fillna(0).astype(int)
    table = table[[s for s in ("train", "val", "test") if s in table.columns]]
    table.loc["total"] = table.sum()
    return table


MISSING = "—"  # what a table shows for a value that was not measured or does not apply


def for_display(frame: pd.DataFrame, formats: dict[str, str] | None = None) -> pd.DataFrame:
    """The table as text for a page: the given columns in their format ("{:.3f}"), whole floats as
    integers, and missing values (None, NaN) as an em dash instead of a literal None."""
    formats = formats or {}

    def text(column: str, value) -> str:
        if value is None or (np.ndim(value) == 0 and pd.isna(value)):
            return MISSING
        if column in formats:
            return formats[column].format(value)
        return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)

    return pd.DataFrame({c: [text(c, v) for v in frame[c]] for c in frame.columns}, index=frame.index)
