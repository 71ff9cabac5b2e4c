"""Score classifier runs' best checkpoints (or shipped networks), alone and averaged, on HAM10000 val and on another labelled
set's choosing splits (`python -m derm score-runs`).

What chooses a teacher or a distillation setting: plain argmax of each run's own softmax (no
temperature, prior correction, routing or TTA, which only `export` adds), so runs compare on what
they learnt. The external set is scored over the classes it has (derm.metrics.present_classes_report);
its test split is refused, since a split that chooses is no longer a test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from derm import data
from derm.classes import CLASSES
from derm.evaluate import classifier_probabilities, load_checkpoint_model, split_table
from derm.external import find_image, read_table
from derm.imageio import ImageError, load_image
from derm.metrics import present_classes_report
from derm.pipeline import ClassifierModel
from derm.weights import load_model, manifest_entry_for_file, shipped_config

SCORED = ("balanced_accuracy", "macro_f1", "macro_auc_renormalised", "melanoma_auc", "accuracy")


@dataclass
class ExternalSet:
    """A labelled folder in derm7pt's layout: images/<image_id>.<ext> and a labels CSV with dx and split."""

    images: Path
    labels: Path
    splits: list[str] = field(default_factory=lambda: ["train", "valid"])


def checkpoint_classifier(source: str | Path) -> tuple[ClassifierModel, dict]:
    """A run's best checkpoint, or a shipped weights file (weights/resnet18.safetensors: the network a
    student would replace), with its own input size, normalisation and colour, no temperature or TTA."""
    source = Path(source)
    if source.suffix == ".safetensors":
        config = shipped_config(source)
        model = load_model(manifest_entry_for_file(source), source.parent)
    else:
        model, config = load_checkpoint_model(source)
    if config.get("task") != "classifier":
        raise ValueError(f"{source}: not a classifier")
    clf = ClassifierModel(config["arch"], model, (config["height"], config["width"]), config["normalization"],
                          colour=config.get("colour", "none"))
    return clf, config


def ham_val_images(config: dict) -> tuple[np.ndarray, np.ndarray]:
    """The HAM10000 val split of the run's own split file, as cached uint8 images at the run's size, and labels."""
    split_path = config["split"] if Path(config["split"]).is_absolute() else data.REPO_ROOT / config["split"]
    part = split_table(split_path, config.get("data"), "val")
    images = data.cached_array(list(part["image_path"]), (config["height"], config["width"]), "image")
    return images, part["label_idx"].to_numpy()


def external_images(external: ExternalSet) -> tuple[list[np.ndarray], np.ndarray]:
    """The decoded images of the external set's choosing splits and their labels (unreadable ones skipped)."""
    if "test" in external.splits:
        raise ValueError("the external set's test split chooses nothing: score train/valid only")
    table = read_table(external.labels)
    table = table[table["split"].isin(external.splits)]
    if table.empty:
        raise ValueError(f"{external.labels}: no rows in splits {external.splits}")
    images, labels = [], []
    for image_id, dx in zip(table["image_id"], table["dx"]):
        path = find_image(external.images, image_id)
        try:
            image = load_image(path) if path else None
        except ImageError:
            image = None
        if image is not None:
            images.append(image)
            labels.append(CLASSES.index(dx))
    if not images:
        raise ValueError(f"no readable images in {external.images} for {external.labels}")
    return images, np.array(labels)


def summary(report: dict) -> dict:
    return {k: report.get(k) for k in SCORED}


def score_runs(run_dirs: list[str], external: ExternalSet | None = None) -> dict:
    """{run name or "average": {"ham_val": {...}, "external": {...}}} for each run and their mean softmax.

    HAM10000 val comes from the first run's split file: runs that would be averaged must share it."""
    names = [Path(r).name for r in run_dirs]
    if len(set(names)) < len(names):
        raise ValueError("give each run once (their folder names label the scores)")
    classifiers = [checkpoint_classifier(r) for r in run_dirs]
    outside = external_images(external) if external else None
    val: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}  # HAM10000 val at each input size, loaded once
    probs: dict[str, dict[str, np.ndarray]] = {}
    for name, (clf, config) in zip(names, classifiers):
        if clf.input_hw not in val:
            val[clf.input_hw] = ham_val_images(config)
        probs[name] = {"ham_val": classifier_probabilities(clf, val[clf.input_hw][0])}
        if outside:  # images of any size: the classifier resizes each to its input
            probs[name]["external"] = classifier_probabilities(clf, outside[0])
    if len(names) > 1:
        probs["average"] = {part: np.mean([probs[n][part] for n in names], axis=0) for part in probs[names[0]]}
    truth = {"ham_val": next(iter(val.values()))[1], **({"external": outside[1]} if outside else {})}
    return {name: {part: summary(present_classes_report(truth[part], p)) for part, p in parts.items()}
            for name, parts in probs.items()}

