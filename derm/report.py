"""Results as tables and files: one image's analysis (for the page and its download) and the
shipped metrics.json / manifest.json (for the model card), so pages only draw.
"""

from __future__ import annotations

import io
import json
import zipfile
from datetime import datetime, timezone

import cv2
import numpy as np
import pandas as pd

from derm.classes import CLASSES, DESCRIPTIONS, FULL_NAMES
from derm.pipeline import Result

NO_SCALE_NOTE = ("HAM10000 images carry no physical scale, so sizes are in pixels of this image "
                 "(or a share of it), never millimetres.")


# ----------------------------------------------------------------------------- one image


def probability_table(result: Result) -> pd.DataFrame:
    """The seven ensemble probabilities, most likely first, with full names and descriptions."""
    rows = [{"class": c, "name": FULL_NAMES[c], "description": DESCRIPTIONS[c], "probability": p}
            for c, p in result.probabilities.items()]
    return pd.DataFrame(rows).sort_values("probability", ascending=False, kind="stable").reset_index(drop=True)


def model_table(result: Result) -> pd.DataFrame:
    """Per class: which model supplies the ensemble's score, the ensemble's and each model's own probability."""
    rows = []
    for c in CLASSES:
        row = {"class": c, "supplied by": result.source.get(c, ""), "ensemble": result.probabilities[c]}
        row.update({name: probs[c] for name, probs in result.per_model.items()})
        rows.append(row)
    return pd.DataFrame(rows)


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


def result_record(result: Result, meta: dict | None = None) -> dict:
    """A JSON-safe summary of one analysis (the mask itself travels as a PNG)."""
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


def result_zip(result: Result, images: dict[str, np.ndarray], meta: dict | None = None) -> bytes:
    """A zip with result.json, the probabilities as CSV, the mask and the given overlay images as PNG."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("result.json", json.dumps(result_record(result, meta), indent=2))
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
    """Which classifier answers each class in the ensemble (the slot and the networks averaged in it),
    and how common the class was in training."""
    ensemble = manifest.get("ensemble", {})
    counts = ensemble.get("train_class_counts", {})
    total = sum(counts.values()) or 1
    members = ensemble.get("members", {})
    routing = ensemble.get("routing", {})
    return pd.DataFrame([{"class": c, "name": FULL_NAMES[c], "model": routing.get(c),
                          "networks": " + ".join(members.get(routing.get(c), [routing.get(c) or ""])),
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
