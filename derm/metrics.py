"""Classification and segmentation metrics; scikit-learn where it has them, small numpy where not."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

from derm.classes import CLASSES, NUM_CLASSES

LABELS = list(range(NUM_CLASSES))


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, bins: int = 15) -> float:
    """ECE: |accuracy - confidence| of the top class, averaged over equal-width confidence bins."""
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y_true).astype(float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def one_vs_rest_auc(probs: np.ndarray, y_true: np.ndarray) -> dict[str, float | None]:
    """AUC-ROC of each class against the rest; None for a class absent (or alone) in y_true."""
    aucs: dict[str, float | None] = {}
    for i, name in enumerate(CLASSES):
        positives = y_true == i
        aucs[name] = float(skm.roc_auc_score(positives, probs[:, i])) if 0 < positives.sum() < len(y_true) else None
    return aucs


def classification_report(y_true: np.ndarray, probs: np.ndarray) -> dict:
    """Everything the model card and explorer show, from true labels and N x 7 probabilities."""
    y_true = np.asarray(y_true, dtype=int)
    probs = np.asarray(probs, dtype=np.float64)
    y_pred = probs.argmax(axis=1)
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=LABELS, zero_division=0)
    confusion = skm.confusion_matrix(y_true, y_pred, labels=LABELS)
    aucs = one_vs_rest_auc(probs, y_true)
    present = [a for a in aucs.values() if a is not None]
    per_class = {
        name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
               "support": int(support[i]), "correct": int(confusion[i, i]), "auc": aucs[name]}
        for i, name in enumerate(CLASSES)
    }
    averages = {}
    for average in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(y_true, y_pred, labels=LABELS, average=average,
                                                         zero_division=0)
        averages[average] = {"precision": float(p), "recall": float(r), "f1": float(f)}
    clipped = np.clip(probs, 1e-7, 1.0)
    return {
        "n": int(len(y_true)),
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(recall[support > 0].mean()) if (support > 0).any() else 0.0,
        "macro_f1": averages["macro"]["f1"],
        "macro_auc": float(np.mean(present)) if present else None,
        "nll": float(-np.log(clipped[np.arange(len(y_true)), y_true]).mean()) if len(y_true) else None,
        "ece": expected_calibration_error(probs, y_true),
        "per_class": per_class,
        "macro": averages["macro"],
        "weighted": averages["weighted"],
        "confusion_matrix": confusion.tolist(),
    }


def present_classes_report(y_true: np.ndarray, probs: np.ndarray) -> dict:
    """classification_report for a set that lacks some classes (e.g. derm7pt has no AKIEC): the label
    is still the argmax over all 7, but balanced accuracy, macro F1 and macro AUC average over the
    classes present in y_true only; adds melanoma-vs-rest AUC and per-class recall."""
    report = classification_report(y_true, probs)
    y_true = np.asarray(y_true, dtype=int)
    present = sorted(set(y_true.tolist()))
    _, recall, f1, _ = skm.precision_recall_fscore_support(y_true, np.asarray(probs).argmax(axis=1), labels=present,
                                                           zero_division=0)
    report.update(classes_present=[CLASSES[i] for i in present],
                  balanced_accuracy=float(recall.mean()) if present else 0.0,
                  macro_f1=float(f1.mean()) if present else 0.0,
                  melanoma_auc=report["per_class"]["MEL"]["auc"],
                  recall={CLASSES[i]: float(r) for i, r in zip(present, recall)})
    # the same average as sklearn's roc_auc_score(multi_class="ovr") on probabilities renormalised over the
    # classes present: another common reading of "macro AUC" for a subset (macro_auc keeps all 7 scores)
    renormalised = np.asarray(probs, dtype=np.float64)[:, present]
    renormalised = renormalised / renormalised.sum(axis=1, keepdims=True)
    aucs = [skm.roc_auc_score(y_true == k, renormalised[:, j]) for j, k in enumerate(present)
            if 0 < (y_true == k).sum() < len(y_true)]
    report["macro_auc_renormalised"] = float(np.mean(aucs)) if aucs else None
    return report


def selection_score(report: dict) -> float:
    """What picks the best epoch: the mean of balanced accuracy and macro F1, both imbalance-aware."""
    return 0.5 * (report["balanced_accuracy"] + report["macro_f1"])


# ----------------------------------------------------------------------------- segmentation


def dice_iou(pred: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of two binary masks; two empty masks agree perfectly (1, 1)."""
    pred = np.asarray(pred, dtype=bool)
    true = np.asarray(true, dtype=bool)
    inter = np.logical_and(pred, true).sum()
    total = pred.sum() + true.sum()
    union = total - inter
    if total == 0:
        return 1.0, 1.0
    return float(2 * inter / total), float(inter / union)


def thresholded_jaccard(ious: np.ndarray, threshold: float = 0.65) -> float:
    """ISIC 2018 Task 1 score: mean IoU where an IoU below `threshold` counts as 0."""
    ious = np.asarray(ious, dtype=float)
    return float(np.where(ious >= threshold, ious, 0.0).mean()) if len(ious) else 0.0


def segmentation_report(dices: np.ndarray, ious: np.ndarray) -> dict:
    dices, ious = np.asarray(dices, dtype=float), np.asarray(ious, dtype=float)
    return {
        "n": int(len(dices)),
        "dice": float(dices.mean()),
        "iou": float(ious.mean()),
        "dice_median": float(np.median(dices)),
        "iou_median": float(np.median(ious)),
        "thresholded_jaccard": thresholded_jaccard(ious),
        "failure_rate": float((ious < 0.65).mean()),
    }


def batch_dice_iou(pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image Dice and IoU for N x H x W binary arrays, vectorised."""
    pred = pred.reshape(len(pred), -1).astype(bool)
    true = true.reshape(len(true), -1).astype(bool)
    inter = (pred & true).sum(1).astype(float)
    total = pred.sum(1) + true.sum(1).astype(float)
    union = total - inter
    empty = total == 0
    dice = np.where(empty, 1.0, 2 * inter / np.maximum(total, 1))
    iou = np.where(empty, 1.0, inter / np.maximum(union, 1))
    return dice, iou
