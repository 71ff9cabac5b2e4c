import numpy as np
import pytest
from sklearn import metrics as skm

from derm import metrics


def random_case(n=300, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 7, n)
    logits = rng.normal(size=(n, 7)) + 2.0 * np.eye(7)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, probs


def test_classification_report_matches_scikit_learn():
    y, probs = random_case()
    pred = probs.argmax(1)
    report = metrics.classification_report(y, probs)
    assert report["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert report["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert report["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert report["weighted"]["f1"] == pytest.approx(skm.f1_score(y, pred, average="weighted"))
    assert report["macro_auc"] == pytest.approx(skm.roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert report["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()
    assert report["per_class"]["MEL"]["support"] == int((y == 4).sum())


def test_absent_class_has_no_auc_and_zero_scores():
    y = np.array([0, 0, 1, 1])
    probs = np.eye(7)[[0, 1, 1, 1]] * 0.9 + 0.1 / 7
    report = metrics.classification_report(y, probs)
    assert report["per_class"]["VASC"]["auc"] is None
    assert report["per_class"]["AKIEC"]["recall"] == 0.5
    assert report["balanced_accuracy"] == pytest.approx(0.75)  # mean recall over present classes


def test_ece_hand_worked():
    # two bins used: confidence 0.9 (2 samples, 1 correct) and 0.6 (2 samples, 2 correct)
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    y = np.array([0, 1, 0, 0])
    expected = 0.5 * abs(0.5 - 0.9) + 0.5 * abs(1.0 - 0.6)
    assert metrics.expected_calibration_error(probs, y) == pytest.approx(expected)


def test_dice_iou_hand_worked():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2, :2] = True  # 4 pixels
    b[:2, :3] = True  # 6 pixels, overlap 4
    assert metrics.dice_iou(a, b) == pytest.approx((8 / 10, 4 / 6))
    assert metrics.dice_iou(np.zeros((2, 2)), np.zeros((2, 2))) == (1.0, 1.0)
    dice, iou = metrics.batch_dice_iou(np.stack([a, a]), np.stack([b, np.zeros_like(b)]))
    assert dice.tolist() == pytest.approx([0.8, 0.0]) and iou.tolist() == pytest.approx([4 / 6, 0.0])


def test_thresholded_jaccard_zeroes_failures():
    assert metrics.thresholded_jaccard(np.array([0.9, 0.64, 0.7])) == pytest.approx((0.9 + 0 + 0.7) / 3)
