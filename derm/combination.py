"""How the ensemble's slots become one answer, and how that rule is chosen.

Every rule is a table of per-class weights over the slots: class c's score is sum_s w[c, s] * p_s[c]
(each row convex), divided by prior_c ** tau (logit adjustment for the rare classes), renormalised.
- `routing`: one-hot rows, the frequent classes from the ResNet18 slot and the rare ones from the
  ResNet50 slot (switched per class where validation AUC clearly favours the other slot);
- `mean`: equal weights;
- `soft`: each row fitted by log-loss on validation, shrunk towards equal weights (L2 on the
  softmax parameters), so a slot carries a class where it has earned it and no class hangs on one
  network's noise.

~1,000 validation images hold 12 DF and 14 VASC: one pass over them would pick noise. So every
candidate (rule x prior-correction strength x which slots take part) is scored by repeated stratified
K-fold cross-validation inside validation: fitted on K-1 folds, predicted on the held-out fold, the
out-of-fold predictions of each repetition scored together, then averaged over repetitions. The
criterion is what a user sees: the mean of balanced accuracy and macro F1, then macro AUC.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from derm.classes import CLASSES

# scipy, scikit-learn and derm.metrics are imported by the fitting functions only: the app and
# `predict` combine with numpy alone and start a second sooner

# prior-correction strengths, in steps of 0.125 where cross-validation has chosen (0 and 0.25 in steps of
# 0.25, their scores within noise: the criterion is flat between them)
PRIOR_CORRECTIONS = (0.0, 0.125, 0.25, 0.375, 0.5, 0.75, 1.0)
SHRINKAGES = (0.003, 0.03, 0.3)  # L2 strength on the soft weights' parameters: weak, medium, strong
FREQUENT_SHARE = 0.10  # a class with at least this share of training images is "frequent"
ROUTING_AUC_MARGIN = 0.02


@dataclass(frozen=True)
class Candidate:
    """One way to combine: which slots, which kind of weights, which prior-correction strength."""

    slots: tuple[str, ...]
    kind: str  # routing | mean | soft
    prior_correction: float
    shrinkage: float = 0.0  # soft only

    @property
    def name(self) -> str:
        kind = f"soft(l2={self.shrinkage:g})" if self.kind == "soft" else self.kind
        return f"{'+'.join(self.slots)} {kind} tau={self.prior_correction:g}"


@dataclass
class Choice:
    """The chosen candidate, its weights refitted on all of validation, and every candidate's CV score."""

    candidate: Candidate
    weights: dict[str, dict[str, float]]
    table: list[dict] = field(default_factory=list)


def weight_matrix(weights: dict[str, dict[str, float]], slots: Sequence[str]) -> np.ndarray:
    """{class: {slot: w}} -> C x S array in CLASSES x `slots` order (a slot a class does not name: 0)."""
    return np.array([[weights[c].get(s, 0.0) for s in slots] for c in CLASSES])


def weights_dict(matrix: np.ndarray, slots: Sequence[str]) -> dict[str, dict[str, float]]:
    return {c: {s: round(float(matrix[i, j]), 4) for j, s in enumerate(slots)} for i, c in enumerate(CLASSES)}


def routing_weights(routing: dict[str, str], slots: Sequence[str]) -> dict[str, dict[str, float]]:
    """Hard routing as weights: each class all from its routed slot."""
    return {c: {s: float(routing[c] == s) for s in slots} for c in CLASSES}


def carrying_slot(weights: dict[str, dict[str, float]]) -> dict[str, str]:
    """The slot with the largest weight for each class: the one the app names and explains first."""
    return {c: max(row, key=row.get) for c, row in weights.items()}


def combine_weighted(slot_probs: dict[str, np.ndarray], weights: dict[str, dict[str, float]],
                     prior: np.ndarray | None = None, prior_correction: float = 0.0) -> np.ndarray:
    """The ensemble's N x 7 probabilities from each slot's: per-class convex mix, prior correction, renormalised."""
    slots = [s for s in slot_probs if any(weights[c].get(s, 0.0) for c in CLASSES)]
    return mix(np.stack([slot_probs[s] for s in slots], axis=2), weight_matrix(weights, slots), prior, prior_correction)


def mix(stack: np.ndarray, w: np.ndarray, prior: np.ndarray | None, tau: float) -> np.ndarray:
    """stack: N x C x S slot probabilities; w: C x S."""
    scores = np.einsum("ncs,cs->nc", stack, w)
    if prior is not None and tau:
        scores = scores * prior[None, :] ** -tau
    return scores / scores.sum(axis=1, keepdims=True)


def frequency_routing(counts: dict[str, int], slots: Sequence[str]) -> dict[str, str]:
    """Frequent classes (>= 10% of training images) -> the first slot, rare ones -> the second."""
    if len(slots) == 1:
        return {c: slots[0] for c in CLASSES}
    total = sum(counts.values())
    return {c: slots[0] if counts[c] / total >= FREQUENT_SHARE else slots[1] for c in CLASSES}


def validated_routing(routing: dict[str, str], slot_probs: dict[str, np.ndarray], y: np.ndarray,
                      margin: float = ROUTING_AUC_MARGIN) -> tuple[dict[str, str], dict]:
    """Keep the frequency routing for a class unless another slot's AUC for it is better by more than
    `margin` (AUC: threshold-free, so fair to a score that gets renormalised)."""
    from derm.metrics import one_vs_rest_auc

    aucs = {s: one_vs_rest_auc(p, y) for s, p in slot_probs.items()}
    final, record = {}, {}
    for c, chosen in routing.items():
        best = max(aucs, key=lambda s: aucs[s][c] or 0.0)
        switch = best != chosen and (aucs[best][c] or 0) - (aucs[chosen][c] or 0) > margin
        final[c] = best if switch else chosen
        record[c] = {"by_frequency": chosen, "val_auc": {s: aucs[s][c] for s in aucs}, "final": final[c]}
    return final, record


def fit_soft_weights(stack: np.ndarray, y: np.ndarray, shrinkage: float) -> np.ndarray:
    """C x S convex weights minimising the mean log-loss of the mixed, renormalised probabilities plus
    `shrinkage` * ||theta||^2, where w = softmax(theta) per class (theta = 0: equal weights)."""
    from scipy.optimize import minimize

    n, c, s = stack.shape
    rows = np.arange(n)

    def loss_and_grad(theta_flat: np.ndarray) -> tuple[float, np.ndarray]:
        theta = theta_flat.reshape(c, s)
        w = np.exp(theta - theta.max(1, keepdims=True))
        w /= w.sum(1, keepdims=True)
        scores = np.einsum("ncs,cs->nc", stack, w)
        total = scores.sum(1)
        loss = -np.mean(np.log(scores[rows, y] + 1e-12) - np.log(total)) + shrinkage * np.sum(theta ** 2)
        # d loss / d w[c, s]: -(1/n) sum_i ([y_i = c] stack[i,c,s] / scores[i,c] - stack[i,c,s] / total_i)
        indicator = np.zeros((n, c))
        indicator[rows, y] = 1.0 / (scores[rows, y] + 1e-12)
        dw = -(np.einsum("nc,ncs->cs", indicator, stack) - np.einsum("n,ncs->cs", 1.0 / total, stack)) / n
        dtheta = w * (dw - (dw * w).sum(1, keepdims=True)) + 2 * shrinkage * theta
        return float(loss), dtheta.ravel()

    result = minimize(loss_and_grad, np.zeros(c * s), jac=True, method="L-BFGS-B")
    theta = result.x.reshape(c, s)
    w = np.exp(theta - theta.max(1, keepdims=True))
    return w / w.sum(1, keepdims=True)


def fit_weights(candidate: Candidate, slot_probs: dict[str, np.ndarray], y: np.ndarray,
                counts: dict[str, int]) -> np.ndarray:
    """The candidate's C x S weight matrix fitted on (slot_probs, y)."""
    slots = candidate.slots
    if candidate.kind == "mean":
        return np.full((len(CLASSES), len(slots)), 1.0 / len(slots))
    if candidate.kind == "routing":
        routing, _ = validated_routing(frequency_routing(counts, slots), {s: slot_probs[s] for s in slots}, y)
        return weight_matrix(routing_weights(routing, slots), slots)
    if candidate.kind == "soft":
        return fit_soft_weights(np.stack([slot_probs[s] for s in slots], axis=2), y, candidate.shrinkage)
    raise ValueError(f"unknown combination kind {candidate.kind!r}")


def candidates(slot_sets: Sequence[Sequence[str]], prior_corrections: Sequence[float] = PRIOR_CORRECTIONS,
               shrinkages: Sequence[float] = SHRINKAGES) -> list[Candidate]:
    """Routing, the plain mean and soft weights at each shrinkage, for each slot set and prior correction."""
    found = []
    for slots in slot_sets:
        for tau in prior_corrections:
            found.append(Candidate(tuple(slots), "routing", tau))
            found.append(Candidate(tuple(slots), "mean", tau))
            found += [Candidate(tuple(slots), "soft", tau, lam) for lam in shrinkages]
    return found


def cross_validate(candidate_list: Sequence[Candidate], slot_probs: dict[str, np.ndarray], y: np.ndarray,
                   prior: np.ndarray, counts: dict[str, int], folds: int = 5, repeats: int = 3) -> list[dict]:
    """Each candidate's scores from out-of-fold predictions, averaged over `repeats` stratified
    K-fold splits (fold seeds 0..repeats-1). Weights are fitted once per (slots, kind, shrinkage) and
    fold; the prior correction is applied after, so candidates differing only in tau share a fit."""
    from sklearn.model_selection import StratifiedKFold

    from derm.metrics import classification_report, selection_score

    y = np.asarray(y)
    n = len(y)
    per_repeat: dict[Candidate, list[dict]] = {cand: [] for cand in candidate_list}
    for seed in range(repeats):
        oof: dict[Candidate, np.ndarray] = {cand: np.zeros((n, len(CLASSES))) for cand in candidate_list}
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        for train_idx, test_idx in splitter.split(np.zeros(n), y):
            fitted: dict[tuple, np.ndarray] = {}
            for cand in candidate_list:
                key = (cand.slots, cand.kind, cand.shrinkage)
                if key not in fitted:
                    fitted[key] = fit_weights(cand, {s: p[train_idx] for s, p in slot_probs.items()},
                                              y[train_idx], counts)
                stack = np.stack([slot_probs[s][test_idx] for s in cand.slots], axis=2)
                oof[cand][test_idx] = mix(stack, fitted[key], prior, cand.prior_correction)
        for cand in candidate_list:
            report = classification_report(y, oof[cand])
            per_repeat[cand].append({"score": selection_score(report), "balanced_accuracy": report["balanced_accuracy"],
                                     "macro_f1": report["macro_f1"], "macro_auc": report["macro_auc"],
                                     "accuracy": report["accuracy"]})
    table = []
    for cand, reports in per_repeat.items():
        row = {"candidate": cand.name, "slots": list(cand.slots), "kind": cand.kind,
               "prior_correction": cand.prior_correction, "shrinkage": cand.shrinkage}
        for key in reports[0]:
            values = [r[key] for r in reports]
            row[key] = round(float(np.mean(values)), 4)
            if key == "score":
                row["score_sd"] = round(float(np.std(values)), 4)
        table.append(row)
    return sorted(table, key=lambda r: (r["score"], r["macro_auc"]), reverse=True)


def choose(slot_probs: dict[str, np.ndarray], y: np.ndarray, prior: np.ndarray, counts: dict[str, int],
           slot_sets: Sequence[Sequence[str]] | None = None, folds: int = 5, repeats: int = 3) -> Choice:
    """Cross-validate every candidate inside validation, take the best (score, then macro AUC) and refit
    its weights on all of validation."""
    slot_sets = slot_sets or [list(slot_probs)]
    cand_list = candidates(slot_sets)
    table = cross_validate(cand_list, slot_probs, y, prior, counts, folds, repeats)
    best = next(c for c in cand_list if c.name == table[0]["candidate"])
    matrix = fit_weights(best, slot_probs, y, counts)
    return Choice(best, weights_dict(matrix, best.slots), table)
