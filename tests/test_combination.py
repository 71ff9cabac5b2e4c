"""How the slots combine (derm.combination): weights per class, fitted and chosen by cross-validation."""

import numpy as np
import pytest

from derm.classes import CLASSES
from derm.combination import (PRIOR_CORRECTIONS, Candidate, carrying_slot, choose, combine_weighted, cross_validate,
                              fit_soft_weights, frequency_routing, routing_weights)

COUNTS = {"AKIEC": 261, "BCC": 410, "BKL": 879, "DF": 92, "MEL": 891, "NV": 5364, "VASC": 114}


def synthetic_slots(n: int = 700, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Two slots: 'good' sees the true class clearly, 'noise' is random; labels drawn with HAM-like imbalance."""
    rng = np.random.default_rng(seed)
    prior = np.array([COUNTS[c] for c in CLASSES], dtype=float)
    y = rng.choice(len(CLASSES), size=n, p=prior / prior.sum())
    logits = rng.normal(size=(n, len(CLASSES)))
    logits[np.arange(n), y] += 2.5
    good = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    noise = rng.dirichlet(np.ones(len(CLASSES)), size=n)
    return {"good": good, "noise": noise}, y


def test_hard_routing_as_weights_takes_each_class_from_its_slot():
    a, b = (np.random.default_rng(k).dirichlet(np.ones(7), size=4) for k in (1, 2))
    routing = frequency_routing(COUNTS, ["resnet18", "resnet50"])
    assert routing["NV"] == "resnet18" and routing["DF"] == "resnet50"
    combined = combine_weighted({"resnet18": a, "resnet50": b}, routing_weights(routing, ["resnet18", "resnet50"]))
    scores = np.stack([(a if routing[c] == "resnet18" else b)[:, i] for i, c in enumerate(CLASSES)], axis=1)
    assert np.allclose(combined, scores / scores.sum(1, keepdims=True))


def test_prior_correction_raises_rare_classes():
    probs = {"s": np.full((3, 7), 1 / 7)}
    weights = {c: {"s": 1.0} for c in CLASSES}
    prior = np.array([COUNTS[c] for c in CLASSES], dtype=float)
    prior /= prior.sum()
    corrected = combine_weighted(probs, weights, prior, 0.5)
    assert corrected[0, CLASSES.index("DF")] > corrected[0, CLASSES.index("NV")]
    assert np.allclose(corrected.sum(1), 1)


def test_soft_weights_favour_the_informative_slot_and_shrink_to_equal():
    slots, y = synthetic_slots()
    stack = np.stack([slots["good"], slots["noise"]], axis=2)
    free = fit_soft_weights(stack, y, shrinkage=1e-4)
    assert np.allclose(free.sum(1), 1) and (free >= 0).all()
    assert (free[:, 0] > 0.7).all()  # every class mostly from the informative slot
    shrunk = fit_soft_weights(stack, y, shrinkage=100.0)
    assert np.allclose(shrunk, 0.5, atol=0.02)


def test_the_soft_weights_gradient_is_right():
    """Fitting uses an analytic gradient: compare the fit with a derivative-free optimiser's on a small problem."""
    from scipy.optimize import minimize

    slots, y = synthetic_slots(n=150, seed=3)
    stack = np.stack([slots["good"], slots["noise"]], axis=2)
    lam = 0.01

    def loss(theta_flat: np.ndarray) -> float:
        theta = theta_flat.reshape(7, 2)
        w = np.exp(theta) / np.exp(theta).sum(1, keepdims=True)
        scores = np.einsum("ncs,cs->nc", stack, w)
        return -np.mean(np.log(scores[np.arange(len(y)), y]) - np.log(scores.sum(1))) + lam * np.sum(theta ** 2)

    reference = minimize(loss, np.zeros(14), method="Powell", options={"xtol": 1e-6, "ftol": 1e-10, "maxfev": 40000}).x
    w_ref = np.exp(reference.reshape(7, 2))
    w_ref /= w_ref.sum(1, keepdims=True)
    assert np.allclose(fit_soft_weights(stack, y, lam), w_ref, atol=0.02)


def test_cross_validation_ranks_the_informative_slot_first():
    slots, y = synthetic_slots(seed=5)
    prior = np.array([COUNTS[c] for c in CLASSES], dtype=float)
    prior /= prior.sum()
    cands = [Candidate(("good",), "mean", 0.0), Candidate(("noise",), "mean", 0.0),
             Candidate(("good", "noise"), "mean", 0.0), Candidate(("good", "noise"), "soft", 0.0, 0.003)]
    table = cross_validate(cands, slots, y, prior, COUNTS, folds=4, repeats=2)
    by_name = {row["candidate"]: row for row in table}
    assert len(table) == len(cands)
    assert by_name["noise mean tau=0"]["score"] < 0.3 < by_name["good mean tau=0"]["score"]
    assert by_name["good+noise soft(l2=0.003) tau=0"]["score"] > by_name["good+noise mean tau=0"]["score"]
    assert table[0]["candidate"] != "noise mean tau=0"


def test_choose_refits_the_winner_on_all_of_validation():
    slots, y = synthetic_slots(seed=7)
    prior = np.array([COUNTS[c] for c in CLASSES], dtype=float)
    prior /= prior.sum()
    choice = choose(slots, y, prior, COUNTS, slot_sets=[["good", "noise"]], folds=3, repeats=1)
    assert choice.table[0]["candidate"] == choice.candidate.name
    assert len(choice.table) == 5 * len(PRIOR_CORRECTIONS)  # routing, mean, three shrinkages; each prior correction
    assert set(choice.weights) == set(CLASSES)
    for row in choice.weights.values():
        assert sum(row.values()) == pytest.approx(1.0, abs=1e-3)
    assert choice.candidate.kind != "mean" or choice.candidate.slots == ("good", "noise")
    assert set(carrying_slot(choice.weights).values()) <= {"good", "noise"}


@pytest.fixture(scope="module")
def weights_with_a_pretrained_slot(tmp_path_factory, tiny_runs, data_dir) -> tuple:
    """The tiny ResNets plus a one-epoch ImageNet-pretrained EfficientNet-Lite0 as a third slot, exported."""
    from derm.export import export
    from derm.train import TrainConfig, train

    runs_root = tiny_runs["resnet18"].parent
    config = TrainConfig.for_task("classifier", "lite0", epochs=1, limit=64, height=48, width=64, batch_size=16,
                                  data=str(data_dir), split=str(runs_root / "split.csv"))
    lite = train(config, runs_root / "lite0", progress=False)
    out = tmp_path_factory.mktemp("weights_pretrained")
    members = {"resnet18": ["resnet18"], "resnet50": ["resnet50"], "efficientnet": ["efficientnet"]}
    metrics = export({"resnet18": tiny_runs["resnet18"], "resnet50": tiny_runs["resnet50"], "efficientnet": lite},
                     None, out, limit=32, members=members)
    return out, metrics


def test_export_chooses_with_and_without_the_pretrained_slot_and_ships_only_what_it_uses(weights_with_a_pretrained_slot):
    import json

    from derm.pipeline import Predictor

    out, metrics = weights_with_a_pretrained_slot
    manifest = json.loads((out / "manifest.json").read_text())
    combination = manifest["ensemble"]["combination"]
    slot_sets = {tuple(row["slots"]) for row in combination["candidates"]}
    assert slot_sets == {("resnet18", "resnet50"), ("resnet18", "resnet50", "efficientnet")}
    assert combination["candidates"][0]["score"] == max(row["score"] for row in combination["candidates"])
    kept = "efficientnet" in combination["slots"]
    assert ("efficientnet" in manifest["models"]) == kept == (out / "efficientnet.safetensors").is_file()
    assert combination["dropped_slots"] == ([] if kept else ["efficientnet"])
    predictor = Predictor(out)
    assert set(predictor.members) == set(combination["slots"])
    assert set(metrics["classifiers"]["test"]) == {*combination["slots"], "ensemble"}
    # every export refits the prediction sets and the triage point on the ensemble it ships
    assert manifest["uncertainty"]["classes"] == list(CLASSES) and set(metrics["uncertainty"]) == {"val", "test"}


def test_grad_cam_reads_an_efficientnet_member():
    import torch

    from derm.explain import gradcam_map
    from derm.models import build_classifier

    model = build_classifier("lite0").eval()
    x = torch.rand(1, 3, 96, 128)
    heat = gradcam_map(model, x, 3)
    assert heat.shape == (96, 128) and heat.min() >= 0 and heat.max() <= 1 and heat.std() > 0
