"""Evaluate a run's best checkpoint on the test split: metrics.json + predictions.csv in runs/<id>/eval/."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from derm import data, runs
from derm.classes import CLASSES
from derm.metrics import batch_dice_iou, classification_report, segmentation_report
from derm.maskclean import NONE as NO_CLEANING
from derm.maskclean import CleanConfig, clean
from derm.models import build_model
from derm.pipeline import ClassifierModel, SegmenterModel

MASK_HW = (450, 600)  # HAM10000 masks' own resolution: segmentation is scored there


def split_table(split_path: str | Path, data_dir: str | None, name: str, limit: int = 0, seed: int = 0) -> pd.DataFrame:
    table = data.attach_split(data.load_table(data_dir), split_path)
    part = table[table["split"] == name]
    if limit:
        part = part.sample(n=min(limit, len(part)), random_state=seed).sort_values("image_id")
    return part.reset_index(drop=True)


def classifier_probabilities(clf: ClassifierModel, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """N x 7 probabilities for uint8 images (N x H x W x 3), batched."""
    out = []
    for start in range(0, len(images), batch_size):
        out.append(clf.probabilities(clf.tensor(list(images[start:start + batch_size]))))
    return np.concatenate(out)


def segmenter_probabilities(seg: SegmenterModel, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    return np.concatenate([seg.probabilities(np.asarray(images[s:s + batch_size]))
                           for s in range(0, len(images), batch_size)])


def full_resolution_scores(probs: np.ndarray, mask_paths: list[str], threshold: float,
                           cleaning: CleanConfig = NO_CLEANING) -> tuple[np.ndarray, np.ndarray]:
    """Per-image Dice/IoU against the original 600x450 masks, upsampling the probability maps, then
    thresholding and cleaning (derm.maskclean) there, as the app does at an image's own size."""
    dices, ious = [], []
    for prob, path in zip(probs, mask_paths):
        truth = cv2.imread(path, cv2.IMREAD_GRAYSCALE) >= 128
        big = clean(cv2.resize(prob, (truth.shape[1], truth.shape[0]), interpolation=cv2.INTER_LINEAR) >= threshold,
                    cleaning)
        d, i = batch_dice_iou(big[None], truth[None])
        dices.append(d[0])
        ious.append(i[0])
    return np.array(dices), np.array(ious)


def load_checkpoint_model(run_dir: Path) -> tuple[torch.nn.Module, dict]:
    state = torch.load(Path(run_dir) / "best.pt", map_location="cpu", weights_only=False)
    config = state["config"]
    model = build_model(config["arch"], config.get("unet_width", 32), config.get("encoder", "none"))
    model.load_state_dict(state["model"])
    model.eval()
    return model.to(memory_format=torch.channels_last), {**config, "best_epoch": state["epoch"]}


def evaluate_run(run_dir: str | Path, split: str = "test", limit: int = 0) -> dict:
    """Score a run's best checkpoint on a split and write eval/metrics.json and eval/predictions.csv."""
    run_dir = Path(run_dir)
    model, config = load_checkpoint_model(run_dir)
    split_path = config["split"] if Path(config["split"]).is_absolute() else data.REPO_ROOT / config["split"]
    part = split_table(split_path, config.get("data"), split, limit)
    size = (config["height"], config["width"])
    images = data.cached_array(list(part["image_path"]), size, "image")
    out_dir = run_dir / "eval"
    out_dir.mkdir(exist_ok=True)
    if config["task"] == "segmenter":
        seg = SegmenterModel(model, size, config["normalization"])
        probs = segmenter_probabilities(seg, images)
        dice, iou = full_resolution_scores(probs, list(part["mask_path"]), 0.5)
        report = {"split": split, "run": run_dir.name, "best_epoch": config["best_epoch"],
                  "resolution": list(MASK_HW), **segmentation_report(dice, iou)}
        pd.DataFrame({"image_id": part["image_id"], "dice": dice, "iou": iou}).to_csv(out_dir / "predictions.csv", index=False)
    else:
        clf = ClassifierModel(config["arch"], model, size, config["normalization"], colour=config.get("colour", "none"))
        probs = classifier_probabilities(clf, images)
        report = {"split": split, "run": run_dir.name, "best_epoch": config["best_epoch"],
                  **classification_report(part["label_idx"].values, probs)}
        predictions_frame(part, {"": probs}).to_csv(out_dir / "predictions.csv", index=False)
    runs.write_json_atomic(out_dir / "metrics.json", report)
    return report


def predictions_frame(part: pd.DataFrame, probs_by_model: dict[str, np.ndarray]) -> pd.DataFrame:
    """image_id, true label, then per model (prefix "" for a single one) predicted label and one column per class."""
    frame = pd.DataFrame({"image_id": part["image_id"].values, "true": part["label"].values})
    for prefix, probs in probs_by_model.items():
        p = f"{prefix}_" if prefix else ""
        frame[f"{p}pred"] = [CLASSES[i] for i in probs.argmax(1)]
        for i, c in enumerate(CLASSES):
            frame[f"{p}{c}"] = probs[:, i].round(6)
    return frame
