"""Prediction sets with a stated coverage: split conformal classification with an adaptive score (RAPS).

A set of diagnoses contains the true one for at least a chosen share (80%, 90%, 95%) of images that are
exchangeable with the calibration images (HAM10000 validation). The score of a class is RAPS
(Angelopoulos et al., ICLR 2021) with its random share of the class's own probability replaced by its
mean, one half, so one image always gets the same set: the probability mass of the classes ranked above
it plus half its own, plus `penalty` for each rank beyond `k_reg`. (Counting all of its own mass, the
stingy end, left a melanoma at 42% out of a 90% set beside a 52% naevus.) Easy images get one class,
hard ones several; the penalty stops the long tail of tiny probabilities from making sets of five. The
threshold is the finite-sample conformal quantile of the true class's score over all calibration images:
the marginal guarantee.

Class-conditional widening: a class whose calibration images the marginal sets cover significantly less
often than the level (one-sided binomial test) is also put in every set where its probability reaches a
minimum, chosen as that class's own conformal quantile among its calibration images the marginal set
missed, so the class alone reaches the level ("Mondrian" on the true class). The widening is in
probability, not in the RAPS score: raising a class's RAPS threshold instead would add it to almost
every set where it ranks second or third. Widening only adds classes, so the marginal guarantee still
holds. A class with too few calibration images for a finite quantile at a level takes its smallest
probability there and is recorded as not guaranteed at that level.

Images whose ensemble slots disagree on the top class: even on HAM10000's own test split their sets
held the truth less often than the level (77% at 90% for the first shipped ensemble). When the
validation images whose slots disagree are significantly under-covered by the marginal threshold, both
groups (slots agree, slots disagree) get thresholds of their own, each calibrated on its own validation
images: a disagreeing image gets a wider set, and each group keeps the guarantee by itself.

The score is the same at every level, each level's threshold is at least the lower levels' and each
minimum probability at most theirs, so the 80% set is inside the 90% set, inside the 95% set, for every
image. The top class is always in the set (never an empty set; that only adds coverage). The penalty and
k_reg are chosen by the smallest held-out mean set size at 90% (5-fold cross-fitting on the calibration
images), then every threshold is fitted on all of them.

Both additions cost set size and, stacked on the marginal guarantee, over-cover: each group reaches the
level by itself and the rest stay where they were. So fit_conformal uses them only where they are needed:
of plain marginal sets, sets with classes widened, and sets with the agreement groups too, it takes the
smallest held-out sets among those whose held-out coverage stays within SHORTFALL of the level for every
class with enough validation images and for the images whose slots disagree. When the disagreeing images
are not calibrated apart, the page says for such an image that the stated coverage may not hold for it,
with their validation coverage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from derm.classes import CLASSES, NUM_CLASSES
from derm.uncertainty.levels import DEFAULT_LEVEL, LEVELS

PENALTIES = (0.0, 0.001, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)  # RAPS's lambda candidates (its paper's grid, and a few more)
K_REGS = (1, 2, 3)
FOLDS = 5
UNDER_COVERED_P = 0.05  # a class is widened when its marginal coverage is this unlikely under the level
NO_WIDENING = math.inf  # a class's minimum probability when it is not widened
OWN_SHARE_LEFT_OUT = 0.5  # RAPS's random U at its mean: the same set for the same image


@dataclass
class ConformalConfig:
    """The fitted sets: the score's two settings, one threshold per level (and, where the slots'
    disagreement marks images the marginal sets under-cover, one per agreement group), and per level
    and class the probability from which a widened class joins every set (inf: not widened)."""

    penalty: float
    k_reg: int
    thresholds: dict[float, float]
    min_probability: dict[float, np.ndarray]
    not_guaranteed: dict[float, list[str]] = field(default_factory=dict)
    n_calibration: int = 0
    by_agreement: dict[float, dict[str, float]] = field(default_factory=dict)  # level -> {"agree": t, "disagree": t}

    @property
    def levels(self) -> tuple[float, ...]:
        return tuple(sorted(self.thresholds))

    def scores(self, probs: np.ndarray) -> np.ndarray:
        return raps_scores(probs, self.penalty, self.k_reg)

    def image_thresholds(self, level: float, disagree: np.ndarray | None, n: int) -> np.ndarray:
        """Each image's threshold: its agreement group's where the sets are grouped and the slots'
        agreement is known, else the marginal one."""
        groups = self.by_agreement.get(level)
        if not groups or disagree is None:
            return np.full(n, self.thresholds[level])
        return np.where(np.asarray(disagree, dtype=bool), groups["disagree"], groups["agree"])

    def membership(self, probs: np.ndarray, level: float, disagree: np.ndarray | None = None) -> np.ndarray:
        """N x 7 booleans: class c is in image n's set at `level` (`disagree`: N booleans, the ensemble's
        slots do not agree on the top class; derm.uncertainty.shift.slots_disagree)."""
        level = check_level(level, self.levels)
        probs = np.asarray(probs, dtype=np.float64)
        return set_membership(self.scores(probs), self.image_thresholds(level, disagree, len(probs)),
                              self.min_probability[level], probs)

    def sets(self, probs: np.ndarray, level: float, disagree: np.ndarray | None = None) -> list[list[str]]:
        """Each image's set as class codes, most probable first."""
        return [ordered_codes(row, p) for row, p in zip(self.membership(probs, level, disagree), np.asarray(probs))]

    def to_dict(self) -> dict:
        return {"method": "split conformal, RAPS score with U = 1/2 (no randomisation); images whose slots disagree "
                          "calibrated apart where the marginal sets under-cover them; classes the sets under-cover "
                          "on validation widened by a per-class minimum probability",
                "penalty": self.penalty, "k_reg": self.k_reg, "n_calibration": self.n_calibration,
                "levels": {f"{level:g}": {
                    "threshold": round(self.thresholds[level], 6),
                    **({"by_slot_agreement": {g: round(t, 6) for g, t in self.by_agreement[level].items()}}
                       if self.by_agreement.get(level) else {}),
                    "widened": {c: round(float(m), 6) for c, m in zip(CLASSES, self.min_probability[level])
                                if math.isfinite(m)},
                    "not_guaranteed": self.not_guaranteed.get(level, [])} for level in self.levels}}

    @classmethod
    def from_dict(cls, section: dict) -> ConformalConfig:
        levels = {float(level): entry for level, entry in section["levels"].items()}
        return cls(float(section["penalty"]), int(section["k_reg"]),
                   {level: float(entry["threshold"]) for level, entry in levels.items()},
                   {level: np.array([float(entry.get("widened", {}).get(c, NO_WIDENING)) for c in CLASSES])
                    for level, entry in levels.items()},
                   {level: list(entry.get("not_guaranteed", [])) for level, entry in levels.items()},
                   int(section.get("n_calibration", 0)),
                   {level: {g: float(t) for g, t in entry["by_slot_agreement"].items()}
                    for level, entry in levels.items() if entry.get("by_slot_agreement")})


def slots_disagree(slot_probs: dict[str, np.ndarray] | None) -> np.ndarray | None:
    """N booleans: the ensemble's slots do not all put the same class on top (None without slots, or with
    one slot: nothing to disagree)."""
    if not slot_probs or len(slot_probs) < 2:
        return None
    tops = np.stack([np.asarray(p).reshape(-1, NUM_CLASSES).argmax(1) for p in slot_probs.values()])
    return (tops != tops[0]).any(0)


def check_level(level: float, levels: tuple[float, ...]) -> float:
    """The stored level equal to `level` (0.9 and 0.90000001 are one level), or a clear ValueError."""
    for known in levels:
        if math.isclose(level, known, abs_tol=1e-9):
            return known
    raise ValueError(f"coverage {level:g} is not one of the fitted levels {', '.join(f'{x:g}' for x in levels)}")


def ranks(probs: np.ndarray) -> np.ndarray:
    """N x 7: each class's rank in its image (0 = most probable; ties broken by class order)."""
    order = np.argsort(-np.asarray(probs), axis=1, kind="stable")
    out = np.empty_like(order)
    np.put_along_axis(out, order, np.broadcast_to(np.arange(order.shape[1]), order.shape).copy(), axis=1)
    return out


def raps_scores(probs: np.ndarray, penalty: float, k_reg: int) -> np.ndarray:
    """N x 7 RAPS scores with the random share U of a class's own probability at its mean 1/2: the mass
    of the classes ranked above a class plus half its own, plus penalty per rank beyond k_reg (ranks
    counted from 1). Rises with rank within an image."""
    probs = np.asarray(probs, dtype=np.float64)
    order = np.argsort(-probs, axis=1, kind="stable")
    cumulative_sorted = np.cumsum(np.take_along_axis(probs, order, axis=1), axis=1)
    cumulative = np.empty_like(cumulative_sorted)
    np.put_along_axis(cumulative, order, cumulative_sorted, axis=1)
    return cumulative - OWN_SHARE_LEFT_OUT * probs + penalty * np.maximum(ranks(probs) + 1 - k_reg, 0)


def conformal_quantile(scores: np.ndarray, level: float) -> float:
    """The ceil((n+1) level)-th smallest score: a new exchangeable score is at most this with
    probability >= level. +inf when n is too small for that."""
    scores = np.sort(np.asarray(scores, dtype=np.float64))
    k = math.ceil((len(scores) + 1) * level - 1e-9)
    return float(scores[k - 1]) if 0 < k <= len(scores) else math.inf


def set_membership(scores: np.ndarray, threshold: float | np.ndarray, min_probability: np.ndarray,
                   probs: np.ndarray) -> np.ndarray:
    """A class is in the set when its score is at most the threshold, or its probability reaches its
    class's minimum (widened classes); the top class always is."""
    member = (scores <= np.reshape(threshold, (-1, 1))) | (probs >= min_probability[None, :])
    member[np.arange(len(member)), probs.argmax(1)] = True
    return member


def ordered_codes(member: np.ndarray, probs: np.ndarray) -> list[str]:
    """The class codes of one set, most probable first."""
    return [CLASSES[i] for i in np.argsort(-probs, kind="stable") if member[i]]


def under_covered(covered: int, n: int, level: float, p_value: float = UNDER_COVERED_P) -> bool:
    """True when covering `covered` of `n` would be unlikely (below p_value) at coverage `level`."""
    from scipy.stats import binomtest  # fitting only: the app's pages import this module without scipy

    return n > 0 and p_value > 0 and binomtest(covered, n, level, alternative="less").pvalue < p_value


def class_min_probability(probs_c: np.ndarray, covered: np.ndarray, level: float) -> tuple[float, bool]:
    """The probability from which class c joins every set so that its own calibration images reach
    `level`: the conformal quantile of "missing" (1 - p_c where the marginal set missed, -inf where it
    covered). Also whether that quantile was finite (else: the smallest missed probability, not guaranteed)."""
    miss = np.where(covered, -np.inf, 1.0 - probs_c)
    q = conformal_quantile(miss, level)
    if q == -np.inf:
        return NO_WIDENING, True
    if math.isinf(q):
        return float(probs_c[~covered].min()), False
    return 1.0 - q, True


MIN_GROUP = 20  # images an agreement group needs for a finite 95% quantile: ceil(21 * 0.95) = 20


def calibrate(probs: np.ndarray, y: np.ndarray, penalty: float, k_reg: int,
              levels: tuple[float, ...] = LEVELS, under_covered_p: float = UNDER_COVERED_P,
              disagree: np.ndarray | None = None) -> ConformalConfig:
    """Thresholds and widening for a given score on calibration probabilities and labels; raised level
    by level so that sets nest. under_covered_p=0 widens no class and groups no images (plain marginal
    split conformal). `disagree` (N booleans: the slots disagree on the top class) lets a group the
    marginal threshold under-covers get thresholds of its own, each group then calibrated on itself."""
    probs, y = np.asarray(probs, dtype=np.float64), np.asarray(y, dtype=int)
    scores = raps_scores(probs, penalty, k_reg)
    true_scores = scores[np.arange(len(y)), y]
    grouped = disagree is not None and under_covered_p > 0 and \
        min(int(np.sum(disagree)), int(np.sum(~np.asarray(disagree, dtype=bool)))) >= MIN_GROUP
    disagree = np.asarray(disagree, dtype=bool) if grouped else None
    thresholds, by_agreement, minimum, not_guaranteed = {}, {}, {}, {}
    floor, ceiling = -math.inf, np.full(NUM_CLASSES, NO_WIDENING)
    group_floor = {"agree": -math.inf, "disagree": -math.inf}  # what each group's images had at the lower levels
    for level in sorted(levels):
        threshold = max(conformal_quantile(true_scores, level), floor)
        candidate = {"agree": threshold, "disagree": threshold}
        if grouped and (by_agreement or under_covered(int((true_scores[disagree] <= threshold).sum()),
                                                      int(disagree.sum()), level, under_covered_p)):
            candidate = {"agree": conformal_quantile(true_scores[~disagree], level),
                         "disagree": conformal_quantile(true_scores[disagree], level)}
            by_agreement[level] = candidate = {g: max(t, group_floor[g]) for g, t in candidate.items()}
        group_floor = candidate
        per_image = (np.where(disagree, candidate["disagree"], candidate["agree"]) if grouped
                     else np.full(len(y), threshold))
        base = set_membership(scores, per_image, np.full(NUM_CLASSES, NO_WIDENING), probs)
        covered = base[np.arange(len(y)), y]
        values, unsure = np.full(NUM_CLASSES, NO_WIDENING), []
        for c, code in enumerate(CLASSES):
            mine = y == c
            if under_covered(int(covered[mine].sum()), int(mine.sum()), level, under_covered_p):
                values[c], sure = class_min_probability(probs[mine, c], covered[mine], level)
                if not sure:
                    unsure.append(code)
        values = np.minimum(values, ceiling)
        thresholds[level], minimum[level], not_guaranteed[level] = threshold, values, unsure
        floor, ceiling = threshold, values
    return ConformalConfig(penalty, k_reg, thresholds, minimum, not_guaranteed, len(y), by_agreement)


def fold_splits(y: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified (fit, held-out) index pairs; classes too small for every fold share one stratum."""
    from sklearn.model_selection import StratifiedKFold  # fitting only, as above

    counts = np.bincount(y, minlength=NUM_CLASSES)
    strata = np.where(counts[y] >= folds, y, -1)
    return list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(strata, strata))


def held_out_set_size(probs: np.ndarray, y: np.ndarray, penalty: float, k_reg: int, level: float = DEFAULT_LEVEL,
                      folds: int = FOLDS, seed: int = 0, under_covered_p: float = UNDER_COVERED_P,
                      disagree: np.ndarray | None = None) -> float:
    """Mean set size at `level` on each fold when calibrated on the others: how a setting is judged
    without scoring the sets on the images that calibrated them."""
    sizes = []
    for fit_idx, held_idx in fold_splits(y, folds, seed):
        config = calibrate(probs[fit_idx], y[fit_idx], penalty, k_reg, (level,), under_covered_p,
                           None if disagree is None else disagree[fit_idx])
        sizes.append(config.membership(probs[held_idx], level, None if disagree is None else disagree[held_idx]).sum(1))
    return float(np.concatenate(sizes).mean())


@dataclass(frozen=True)
class Variant:
    """Which of the two additions to plain split conformal a fit uses."""

    name: str
    widen: bool   # classes the marginal sets under-cover get a minimum probability of their own
    groups: bool  # images whose slots disagree get thresholds of their own

    def under_covered_p(self, p: float) -> float:
        return p if self.widen else 0.0


VARIANTS = (Variant("marginal", False, False), Variant("classes widened", True, False),
            Variant("slot groups and classes widened", True, True))
SHORTFALL = 0.15    # held out, a class (or the images whose slots disagree) may fall this far under the level
MIN_JUDGED = 20     # classes with fewer validation images are too few to judge held out (DF, VASC: 12-14)
CHECK_SEEDS = (0, 1, 2)


def held_out_report(probs: np.ndarray, y: np.ndarray, variant: Variant, penalty: float, k_reg: int,
                    level: float = DEFAULT_LEVEL, under_covered_p: float = UNDER_COVERED_P,
                    disagree: np.ndarray | None = None, folds: int = FOLDS, seeds: tuple[int, ...] = CHECK_SEEDS) -> dict:
    """Coverage and mean set size of a variant on each fold when calibrated on the others, over several fold
    seeds: overall, per class, and for the images whose slots disagree."""
    counts = np.bincount(y, minlength=NUM_CLASSES)
    groups = disagree if variant.groups else None
    covered, sizes = [], []
    for seed in seeds:
        cover, size = np.zeros(len(y), bool), np.zeros(len(y))
        for fit_idx, held_idx in fold_splits(y, folds, seed):
            config = calibrate(probs[fit_idx], y[fit_idx], penalty, k_reg, (level,), variant.under_covered_p(under_covered_p),
                               None if groups is None else groups[fit_idx])
            member = config.membership(probs[held_idx], level, None if groups is None else groups[held_idx])
            cover[held_idx], size[held_idx] = member[np.arange(len(held_idx)), y[held_idx]], member.sum(1)
        covered.append(cover)
        sizes.append(size.mean())
    covered = np.stack(covered)
    per_class = {code: round(float(covered[:, y == c].mean()), 4) for c, code in enumerate(CLASSES) if counts[c]}
    judged = [covered[:, y == c].mean() for c in range(NUM_CLASSES) if counts[c] >= MIN_JUDGED]
    if disagree is not None and disagree.any():
        judged.append(covered[:, np.asarray(disagree, dtype=bool)].mean())
    # too few images to judge any group (a quick export on a few images): the overall coverage stands in
    lowest = min(judged) if judged else covered.mean()
    return {"coverage": round(float(covered.mean()), 4), "mean_size": round(float(np.mean(sizes)), 4),
            "per_class": per_class, "lowest_judged": round(float(lowest), 4),
            **({"slots_disagree": round(float(covered[:, np.asarray(disagree, dtype=bool)].mean()), 4)}
               if disagree is not None and disagree.any() else {})}


def best_score_setting(probs: np.ndarray, y: np.ndarray, variant: Variant, penalties: tuple[float, ...],
                       k_regs: tuple[int, ...], under_covered_p: float, disagree: np.ndarray | None
                       ) -> tuple[tuple[float, int], dict[tuple[float, int], float]]:
    """The (penalty, k_reg) with the smallest held-out mean set size at the default level (ties: the smaller
    penalty, then k_reg), and every setting's size."""
    groups = disagree if variant.groups else None
    sizes = {(p, k): held_out_set_size(probs, y, p, k, under_covered_p=variant.under_covered_p(under_covered_p),
                                       disagree=groups) for p in penalties for k in k_regs}
    return min(sizes, key=lambda pk: (round(sizes[pk], 4), pk)), sizes


def fit_conformal(probs: np.ndarray, y: np.ndarray, levels: tuple[float, ...] = LEVELS,
                  penalties: tuple[float, ...] = PENALTIES, k_regs: tuple[int, ...] = K_REGS,
                  under_covered_p: float = UNDER_COVERED_P, disagree: np.ndarray | None = None,
                  variants: tuple[Variant, ...] = VARIANTS) -> tuple[ConformalConfig, dict]:
    """The sets for an ensemble, from its validation probabilities and labels alone. For each variant (plain
    marginal sets; with classes widened; with the slots' agreement groups too, where `disagree` is given):
    the (penalty, k_reg) with the smallest held-out mean set size, then its held-out coverage (5-fold, three
    fold seeds). The smallest sets among the variants that keep every class with enough validation images,
    and the images whose slots disagree, within SHORTFALL of the default level held out; the most thorough
    variant when none does. Then every threshold is fitted on all validation images. Returns the config and
    what chose it."""
    probs, y = np.asarray(probs, dtype=np.float64), np.asarray(y, dtype=int)
    if probs.ndim != 2 or probs.shape[1] != NUM_CLASSES or len(probs) != len(y):
        raise ValueError(f"need N x {NUM_CLASSES} probabilities and N labels, got {probs.shape} and {len(y)}")
    candidates = [v for v in variants if disagree is not None or not v.groups]
    if under_covered_p <= 0:  # plain marginal split conformal asked for
        candidates = [v for v in candidates if not v.widen and not v.groups]
    rows = []
    for variant in candidates:
        (penalty, k_reg), sizes = best_score_setting(probs, y, variant, penalties, k_regs, under_covered_p, disagree)
        rows.append((variant, penalty, k_reg, sizes,
                     held_out_report(probs, y, variant, penalty, k_reg, DEFAULT_LEVEL, under_covered_p, disagree)))
    floor = DEFAULT_LEVEL - SHORTFALL
    keeping = [row for row in rows if row[4]["lowest_judged"] >= floor]
    variant, penalty, k_reg, sizes, _ = (min(keeping, key=lambda row: row[4]["mean_size"]) if keeping else rows[-1])
    config = calibrate(probs, y, penalty, k_reg, levels, variant.under_covered_p(under_covered_p),
                       disagree if variant.groups else None)
    return config, {
        "rule": f"per variant, the score setting with the smallest mean set size at {DEFAULT_LEVEL:g} on held-out folds "
                f"({FOLDS}-fold cross-fitting); then the variant with the smallest held-out sets among those whose "
                f"held-out coverage stays at or above {floor:g} for every class with at least {MIN_JUDGED} validation "
                f"images and for the images whose slots disagree ({FOLDS} folds x {len(CHECK_SEEDS)} fold seeds)",
        "variant": variant.name,
        "variants": {v.name: {"penalty": p, "k_reg": k, "held_out": report} for v, p, k, _, report in rows},
        "held_out_mean_size": {f"penalty={p:g},k_reg={k}": round(s, 4) for (p, k), s in sizes.items()},
        "penalty": penalty, "k_reg": k_reg}
