"""Evaluate any labelled set of images through the app's own pipeline (`python -m derm evaluate-set`).

Classification: a folder of images and a CSV `image_id,dx` (HAM10000 codes, any case, any subset of
the 7 classes). Each image is decoded by derm.imageio and classified by Predictor.classify (the same
preprocessing, TTA, temperatures and routing as the app); the label is the argmax over all 7 classes,
but balanced accuracy, macro F1 and macro AUC are averaged over the classes present in the labels.
Reported per model and for the ensemble, with melanoma-vs-rest AUC and per-class recall.

Segmentation: a folder of images and one of masks (`<id>_segmentation.png`, `<id>_mask.png` or
`<id>.png`). Each mask comes from SegmenterModel (the app's mask: threshold and derm.maskclean
cleaning), scored at the reference mask's own size: where that differs from the image's, the
probability map is resized to it bilinearly, then thresholded and cleaned. Reported with and without
the cleaning (same probability maps), with over- and under-segmentation as shares of the true area.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from derm.classes import CLASSES
from derm.imageio import ImageError, load_image
from derm.maskclean import NONE, clean
from derm.metrics import batch_dice_iou, present_classes_report, segmentation_report
from derm.pipeline import Predictor, averages_networks
from derm.uncertainty.shift import labelled_set_section

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MASK_PATTERNS = ("{}_segmentation.png", "{}_mask.png", "{}.png")


def read_table(csv_path: str | Path, split: str | None = None, limit: int = 0) -> pd.DataFrame:
    """The rows to score: `image_id` and, where given, `dx` (upper-cased HAM10000 codes); `split`
    keeps only rows whose `split` column equals it."""
    table = pd.read_csv(csv_path, dtype={"image_id": str})
    if "image_id" not in table.columns:
        raise ValueError(f"{csv_path}: needs an image_id column (has {', '.join(table.columns)})")
    if split is not None:
        if "split" not in table.columns:
            raise ValueError(f"{csv_path}: --split {split} given but the CSV has no split column")
        table = table[table["split"] == split]
        if table.empty:
            raise ValueError(f"{csv_path}: no rows with split == {split!r}")
    if "dx" in table.columns:
        table = table.assign(dx=table["dx"].astype(str).str.strip().str.upper())
        unknown = sorted(set(table["dx"]) - set(CLASSES))
        if unknown:
            raise ValueError(f"{csv_path}: dx values {unknown} are not HAM10000 classes {list(CLASSES)}")
    if limit:
        table = table.head(limit)
    return table.reset_index(drop=True)


def find_image(folder: Path, image_id: str) -> Path | None:
    direct = folder / image_id
    if direct.suffix.lower() in IMAGE_SUFFIXES and direct.is_file():
        return direct
    for suffix in IMAGE_SUFFIXES:
        for candidate in (folder / f"{image_id}{suffix}", folder / f"{image_id}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def find_mask(folder: Path, image_id: str) -> Path | None:
    stem = Path(image_id).stem if Path(image_id).suffix.lower() in IMAGE_SUFFIXES else image_id
    for pattern in MASK_PATTERNS:
        if (folder / pattern.format(stem)).is_file():
            return folder / pattern.format(stem)
    return None


def images_in(folder: Path) -> pd.DataFrame:
    """Every image in a folder as a table (for a mask folder pair without a CSV)."""
    ids = sorted(p.stem for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return pd.DataFrame({"image_id": ids})


def _decoded(paths: Iterable[tuple[str, Path | None]], skipped: list[str]) -> Iterator[tuple[str, np.ndarray]]:
    for image_id, path in paths:
        if path is None:
            skipped.append(f"{image_id}: no image file")
            continue
        try:
            yield image_id, load_image(path)
        except ImageError as exc:
            skipped.append(str(exc))


def _progress(items, total: int, desc: str, enabled: bool):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, total=total, desc=desc, unit="img", file=sys.stderr)


def evaluate_classification(predictor: Predictor, images_dir: str | Path, table: pd.DataFrame, batch_size: int = 16,
                            progress: bool = True) -> tuple[dict, pd.DataFrame]:
    """Per slot (resnet18, resnet50: what the app shows) and ensemble, and for slots of several models
    each member alone ("members"): present_classes_report, plus a per-image predictions frame."""
    images_dir = Path(images_dir)
    if "dx" not in table.columns:
        raise ValueError("classification needs a dx column in the labels CSV")
    labels = dict(zip(table["image_id"], table["dx"]))
    skipped: list[str] = []
    ids: list[str] = []
    ensemble: list[np.ndarray] = []
    per_slot: dict[str, list[np.ndarray]] = {name: [] for name in predictor.members}
    per_member: dict[str, list[np.ndarray]] = {name: [] for name in predictor.classifiers}
    batch: list[tuple[str, np.ndarray]] = []
    domains: list = []  # the gate's verdicts: does its score say where the prediction sets miss?

    def flush() -> None:
        members, verdicts = predictor.model_probabilities_and_domain([rgb for _, rgb in batch])
        combined, slots = predictor.ensemble(members)
        domains.extend(verdicts)
        ids.extend(i for i, _ in batch)
        ensemble.append(combined)
        for name, p in slots.items():
            per_slot[name].append(p)
        for name, p in members.items():
            per_member[name].append(p)
        batch.clear()

    paths = ((i, find_image(images_dir, i)) for i in table["image_id"])
    for item in _progress(_decoded(paths, skipped), len(table), "classify", progress):
        batch.append(item)
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    if not ids:
        raise ValueError(f"no readable images in {images_dir} for the {len(table)} rows given")
    y_true = np.array([CLASSES.index(labels[i]) for i in ids])
    probs = {"ensemble": np.concatenate(ensemble), **{n: np.concatenate(p) for n, p in per_slot.items()}}
    reports = {name: present_classes_report(y_true, p) for name, p in probs.items()}
    result = {"n": len(ids), "skipped": skipped, "models": reports}
    if averages_networks(predictor.members):  # each member alone, beside its slot
        result["members"] = {n: present_classes_report(y_true, np.concatenate(p)) for n, p in per_member.items()}
    frame = pd.DataFrame({"image_id": ids, "true": [labels[i] for i in ids]})
    for name, p in probs.items():
        frame[f"{name}_pred"] = [CLASSES[k] for k in p.argmax(1)]
        add_probability_columns(frame, name, p)
    if "members" in result:  # every network's own probabilities, so other slot combinations can be scored from one run
        for name, parts in per_member.items():
            add_probability_columns(frame, f"member_{name}", np.concatenate(parts))
    uncertainty, sets = labelled_set_section(predictor.manifest, ids, probs["ensemble"], y_true,
                                             {n: probs[n] for n in per_slot}, domains)
    if uncertainty is not None:  # prediction sets and triage: coverage, sizes, sensitivity on this set
        result["uncertainty"] = uncertainty
        frame = frame.merge(sets, on="image_id")
    return result, frame


def add_probability_columns(frame: pd.DataFrame, prefix: str, probs: np.ndarray) -> None:
    for k, c in enumerate(CLASSES):
        frame[f"{prefix}_{c}"] = probs[:, k].round(6)


def _error_shares(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """False-positive and false-negative area as shares of the true lesion's area."""
    area = max(int(truth.sum()), 1)
    return float((pred & ~truth).sum() / area), float((~pred & truth).sum() / area)


def _seg_summary(dice: list[float], iou: list[float], fp: list[float], fn: list[float]) -> dict:
    return {**segmentation_report(np.array(dice), np.array(iou)), "false_positive_share": float(np.mean(fp)),
            "false_negative_share": float(np.mean(fn))}


def evaluate_segmentation(predictor: Predictor, images_dir: str | Path, masks_dir: str | Path, table: pd.DataFrame,
                          progress: bool = True) -> tuple[dict, pd.DataFrame]:
    """Dice, IoU and thresholded Jaccard at each reference mask's own size, with and without cleaning."""
    seg = predictor.segmenter
    if seg is None:
        raise ValueError("these weights have no segmenter (unet) entry")
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    skipped: list[str] = []
    rows = []
    scores = {"cleaned": ([], [], [], []), "raw": ([], [], [], [])}

    def with_masks() -> Iterator[tuple[str, Path | None]]:
        for image_id in table["image_id"]:
            if find_mask(masks_dir, image_id) is None:
                skipped.append(f"{image_id}: no mask in {masks_dir}")
                continue
            yield image_id, find_image(images_dir, image_id)

    for image_id, rgb in _progress(_decoded(with_masks(), skipped), len(table), "segment", progress):
        truth = cv2.imread(str(find_mask(masks_dir, image_id)), cv2.IMREAD_GRAYSCALE)
        if truth is None:
            skipped.append(f"{image_id}: mask does not decode")
            continue
        truth = truth >= 128
        cleaned, prob = seg.mask(rgb)
        if prob.shape != truth.shape:
            prob = cv2.resize(prob, (truth.shape[1], truth.shape[0]), interpolation=cv2.INTER_LINEAR)
            cleaned = clean(prob >= seg.threshold, seg.cleaning)
        row = {"image_id": image_id}
        for name, pred in (("cleaned", cleaned), ("raw", clean(prob >= seg.threshold, NONE))):
            d, i = batch_dice_iou(pred[None], truth[None])
            fp, fn = _error_shares(pred, truth)
            for bucket, value in zip(scores[name], (d[0], i[0], fp, fn)):
                bucket.append(float(value))
            row.update({f"{name}_dice": round(float(d[0]), 6), f"{name}_iou": round(float(i[0]), 6)})
        rows.append(row)
    if not rows:
        raise ValueError(f"no image with a readable mask in {images_dir} / {masks_dir}")
    report = {"n": len(rows), "skipped": skipped, "threshold": seg.threshold, "cleaning": seg.cleaning.to_dict(),
              "cleaning_rule": seg.cleaning.describe(), "resolution": "each reference mask's own size",
              **{name: _seg_summary(*values) for name, values in scores.items()}}
    return report, pd.DataFrame(rows)
