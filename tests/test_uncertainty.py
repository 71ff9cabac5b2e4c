"""Prediction sets and the malignancy triage: the conformal guarantee on exchangeable samples, nested
sets, the triage's operating point, the manifest section, predict's columns, evaluate-set's report and
the pages, on synthetic probabilities and on tiny real weights."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import betabinom, binom

from derm.classes import CLASSES, NUM_CLASSES
from derm.uncertainty import UncertaintyConfig, fit_uncertainty, uncertainty_report
from derm.uncertainty.conformal import LEVELS, calibrate, conformal_quantile, fit_conformal
from derm.uncertainty.triage import (fit_triage, is_malignant, malignancy_score, sensitivity_specificity)

REPO = Path(__file__).resolve().parent.parent


HAM_PRIOR = np.array([0.05, 0.07, 0.11, 0.02, 0.11, 0.62, 0.02])  # about HAM10000's class shares
EVEN_PRIOR = np.full(NUM_CLASSES, 1 / NUM_CLASSES)


def synthetic(n: int, seed: int, concentration: float = 0.6, shrink: dict[int, float] | None = None,
              prior: np.ndarray = HAM_PRIOR) -> tuple[np.ndarray, np.ndarray]:
    """Exchangeable (probabilities, label) pairs: labels drawn from a 'true' Dirichlet distribution,
    shown to the sets as tempered and (for classes in `shrink`) shrunk probabilities, so the model is
    neither perfect nor calibrated, and a shrunk class is under-covered by marginal sets."""
    rng = np.random.default_rng(seed)
    truth = rng.dirichlet(prior * NUM_CLASSES * concentration, size=n)
    y = (truth.cumsum(1) > rng.random((n, 1))).argmax(1)
    shown = truth ** 0.7
    for c, factor in (shrink or {}).items():
        shown[:, c] *= factor
    return shown / shown.sum(1, keepdims=True), y


def binomial_interval(p: float, n: int, tail: float = 1e-4) -> tuple[float, float]:
    return binom.ppf(tail, n, p) / n, binom.ppf(1 - tail, n, p) / n


# ----------------------------------------------------------------------------- the guarantee


@pytest.mark.parametrize("seed", [0, 1])
def test_coverage_on_an_exchangeable_sample_lands_in_its_binomial_interval(seed):
    """Split conformal with n calibration images: the coverage of m new exchangeable images is
    beta-binomial, BetaBinomial(m, k, n + 1 - k) with k = ceil((n + 1) level) (the binomial of the m
    draws around a coverage that itself varies with the calibration sample; Angelopoulos and Bates,
    "A gentle introduction to conformal prediction", section 3.2). Classes of even frequency and one
    model for all; no class widened (the widening only adds coverage: with it, the lower bound holds)."""
    n, m = 1000, 20000
    probs, y = synthetic(n + m, seed, prior=EVEN_PRIOR)
    plain, _ = fit_conformal(probs[:n], y[:n], under_covered_p=0.0)
    widened, _ = fit_conformal(probs[:n], y[:n])
    for level in LEVELS:
        assert not np.isfinite(plain.min_probability[level]).any()
        k = math.ceil((n + 1) * level)
        low, high = betabinom.ppf([1e-4, 1 - 1e-4], m, k, n + 1 - k) / m
        coverage = plain.membership(probs[n:], level)[np.arange(m), y[n:]].mean()
        assert low <= coverage <= high, (level, coverage, low, high)
        assert widened.membership(probs[n:], level)[np.arange(m), y[n:]].mean() >= low


def test_an_under_covered_class_gets_its_own_coverage_and_the_others_keep_theirs():
    n, m = 3000, 20000
    probs, y = synthetic(n + m, 2, shrink={2: 0.25})  # BKL's probability shown four times too low
    marginal = calibrate(probs[:n], y[:n], 0.0, 1)
    member = marginal.membership(probs[n:], 0.9)
    covered = member[np.arange(m), y[n:]]
    assert "BKL" in [CLASSES[c] for c in range(NUM_CLASSES) if np.isfinite(marginal.min_probability[0.9][c])]
    bkl = y[n:] == 2
    low, _ = binomial_interval(0.9, int(bkl.sum()))
    assert covered[bkl].mean() >= low  # the widened class reaches the level by itself
    assert covered.mean() >= binomial_interval(0.9, m)[0]


def disagreeing_sample(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """A sample where a quarter of the images get two slots that disagree and a flattened, overconfident
    ensemble answer (hard images the marginal threshold under-covers); the rest two slots that agree."""
    probs, y = synthetic(n, seed, prior=EVEN_PRIOR)
    rng = np.random.default_rng(seed + 100)
    hard = rng.random(n) < 0.25
    shown = probs.copy()
    shown[hard] = rng.dirichlet(np.full(NUM_CLASSES, 0.3), size=int(hard.sum()))  # the answer says little
    other = shown.copy()
    other[hard] = np.roll(shown[hard], 1, axis=1)  # the second slot's top class moves
    return shown, y, {"a": shown, "b": other}


def test_images_whose_slots_disagree_get_thresholds_of_their_own_and_their_coverage():
    from derm.uncertainty.conformal import slots_disagree

    n, m = 2000, 20000
    probs, y, slots = disagreeing_sample(n + m, 7)
    disagree = slots_disagree(slots)
    plain = calibrate(probs[:n], y[:n], 0.0, 1)
    grouped = calibrate(probs[:n], y[:n], 0.0, 1, disagree=disagree[:n])
    assert 0.9 in grouped.by_agreement and grouped.by_agreement[0.9]["disagree"] > grouped.by_agreement[0.9]["agree"]
    held = np.arange(m)
    missed_plain = plain.membership(probs[n:], 0.9)[held, y[n:]][disagree[n:]].mean()
    covered = grouped.membership(probs[n:], 0.9, disagree[n:])[held, y[n:]]
    low, _ = binomial_interval(0.9, int(disagree[n:].sum()))
    assert missed_plain < low <= covered[disagree[n:]].mean()  # under-covered before, at the level after
    assert covered.mean() >= binomial_interval(0.9, m)[0]
    members = [grouped.membership(probs[n:], level, disagree[n:]) for level in sorted(LEVELS)]
    assert all(not (a & ~b).any() for a, b in zip(members, members[1:]))


def test_sets_are_nested_for_every_image():
    probs, y = synthetic(4000, 3, shrink={2: 0.3, 0: 0.5})
    config, _ = fit_conformal(probs[:1000], y[:1000])
    members = [config.membership(probs[1000:], level) for level in sorted(LEVELS)]
    for smaller, larger in zip(members, members[1:]):
        assert not (smaller & ~larger).any()
    assert (members[-1].sum(1) > members[0].sum(1)).any()  # the levels differ at all
    assert (members[0].sum(1) >= 1).all()  # never an empty set


def test_conformal_quantile_is_the_finite_sample_order_statistic():
    scores = np.arange(1, 10, dtype=float)  # n = 9: level 0.9 needs the ceil(10 * 0.9) = 9th smallest
    assert conformal_quantile(scores, 0.9) == 9.0
    assert conformal_quantile(scores, 0.8) == 8.0
    assert math.isinf(conformal_quantile(scores, 0.95))  # ceil(9.5) = 10 > n


# ----------------------------------------------------------------------------- triage


def test_triage_threshold_reproduces_its_validation_sensitivity():
    probs, y = synthetic(1500, 4)
    triage = fit_triage(probs, y)
    scores, positive = malignancy_score(probs), is_malignant(y)
    measured = sensitivity_specificity(scores, positive, triage.threshold)
    assert measured["sensitivity"] == pytest.approx(triage.val_sensitivity) and measured["sensitivity"] >= 0.95
    assert measured["specificity"] == pytest.approx(triage.val_specificity)
    higher = np.min(scores[scores > triage.threshold])  # the next threshold up flags fewer than 95%
    assert sensitivity_specificity(scores, positive, higher)["sensitivity"] < 0.95
    assert np.allclose(scores, probs[:, [CLASSES.index(c) for c in ("AKIEC", "BCC", "MEL")]].sum(1))


# ----------------------------------------------------------------------------- the manifest section


def test_the_section_is_json_and_reads_back_to_the_same_sets():
    probs, y = synthetic(1200, 5)
    section = json.loads(json.dumps(fit_uncertainty(probs[:800], y[:800])))
    config = UncertaintyConfig.from_manifest({"uncertainty": section})
    original, _ = fit_conformal(probs[:800], y[:800])
    for level in LEVELS:
        assert (config.membership(probs[800:], level) == original.membership(probs[800:], level)).all()
    report = uncertainty_report(probs[800:], y[800:], section)
    assert set(report["levels"]) == {f"{x:g}" for x in LEVELS}
    assert sum(report["levels"]["0.9"]["size_counts"].values()) == 400
    assert report["triage"]["n_malignant"] == int(is_malignant(y[800:]).sum())


def test_weights_without_or_with_an_unknown_section_give_no_sets():
    assert UncertaintyConfig.from_manifest({"classes": list(CLASSES)}) is None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert UncertaintyConfig.from_manifest({"uncertainty": {"version": 99}}) is None
    assert caught and "version" in str(caught[0].message)


def test_a_level_that_was_not_fitted_is_refused_clearly():
    probs, y = synthetic(600, 6)
    config = UncertaintyConfig.from_dict(fit_uncertainty(probs, y))
    with pytest.raises(ValueError, match="not one of the fitted levels"):
        config.prediction_sets(probs[:1], 0.85)


# ----------------------------------------------------------------------------- on tiny real weights


@pytest.fixture(scope="module")
def weights_with_sets(tiny_weights, data_dir, tmp_path_factory) -> Path:
    """The tiny weights with their uncertainty section fitted by the command line on their validation split."""
    out = tmp_path_factory.mktemp("uncertainty") / "weights"
    shutil.copytree(tiny_weights, out)
    done = run_cli("calibrate-uncertainty", "--weights", out, "--data", data_dir)
    assert done.returncode == 0, done.stderr
    assert "val    0.9 coverage=" in done.stdout
    return out


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "derm", *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=600)


def test_calibrate_uncertainty_writes_the_section_and_its_reports(weights_with_sets):
    manifest = json.loads((weights_with_sets / "manifest.json").read_text())
    config = UncertaintyConfig.from_manifest(manifest)
    assert config is not None and config.levels == LEVELS
    metrics = json.loads((weights_with_sets / "metrics.json").read_text())
    assert {"val", "test"} <= set(metrics["uncertainty"])
    assert metrics["uncertainty"]["val"]["levels"]["0.9"]["coverage"] == pytest.approx(config.val_coverage[0.9], abs=1e-4)


def test_predict_csv_columns_parse_and_follow_the_section(weights_with_sets, data_dir):
    images = sorted((data_dir / "images").glob("*.jpg"))[:3]
    config = UncertaintyConfig.from_manifest(json.loads((weights_with_sets / "manifest.json").read_text()))
    rows = {}
    for level in LEVELS:
        done = run_cli("predict", *images, "--weights", weights_with_sets, "--coverage", level)
        assert done.returncode == 0, done.stderr
        rows[level] = list(csv.DictReader(io.StringIO(done.stdout)))
    for k, row in enumerate(rows[0.9]):
        probs = np.array([float(row[c]) for c in CLASSES])
        codes = row["prediction_set"].split("|")
        assert set(codes) <= set(CLASSES) and codes[0] == row["label"]
        assert [probs[CLASSES.index(c)] for c in codes] == sorted((probs[CLASSES.index(c)] for c in codes), reverse=True)
        score = float(row["malignancy_score"])
        assert 0 <= score <= 1 and score == pytest.approx(probs[[0, 1, 4]].sum(), abs=1e-5)
        assert row["malignancy_flag"] in ("true", "false")
        assert (row["malignancy_flag"] == "true") == (score >= config.triage.threshold)
        nested = [set(rows[level][k]["prediction_set"].split("|")) for level in sorted(LEVELS)]
        assert nested[0] <= nested[1] <= nested[2]


@pytest.fixture(scope="module")
def weights_without_sets(tiny_weights, tmp_path_factory) -> Path:
    """The tiny weights as exported before the uncertainty section existed."""
    out = tmp_path_factory.mktemp("no-uncertainty") / "weights"
    shutil.copytree(tiny_weights, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest.pop("uncertainty", None)
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def test_predict_on_weights_without_a_section_leaves_the_columns_empty(weights_without_sets, data_dir):
    image = sorted((data_dir / "images").glob("*.jpg"))[0]
    done = run_cli("predict", image, "--weights", weights_without_sets, "--format", "json")
    assert done.returncode == 0 and "no uncertainty section" in done.stderr
    (row,) = json.loads(done.stdout)
    assert row["prediction_set"] is None and row["malignancy_flag"] is None


def test_evaluate_set_reports_coverage_set_sizes_and_triage(weights_with_sets, data_dir, tmp_path):
    from derm import external
    from derm.pipeline import Predictor

    table = pd.read_csv(data_dir / "HAM10000_metadata.csv").head(24)
    labels = pd.DataFrame({"image_id": table["image_id"], "dx": table["dx"].str.upper()})
    result, frame = external.evaluate_classification(Predictor(weights_with_sets), data_dir / "images", labels,
                                                     progress=False)
    report = result["uncertainty"]
    level = report["levels"]["0.9"]
    covered = [t in s.split("|") for t, s in zip(frame["true"], frame["prediction_set"])]
    assert level["coverage"] == pytest.approx(np.mean(covered)) and level["n"] == len(frame)
    assert level["mean_size"] == pytest.approx(frame["set_size"].mean())
    assert report["triage"]["n_malignant"] == int(frame["true"].isin(["MEL", "BCC", "AKIEC"]).sum())
    shift = report["shift"]
    assert shift["slots_agree"]["n"] + shift["slots_disagree"]["n"] == len(frame)


# ----------------------------------------------------------------------------- the pages


def start_app(weights: Path, monkeypatch, tmp_path, page: str | None = None):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("DERM_WEIGHTS", str(weights))
    monkeypatch.setenv("DERM_RUNS", str(tmp_path / "runs"))
    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=120).run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def markdown(at) -> str:
    return " | ".join(str(m.value) for m in at.markdown)


def test_the_diagnose_page_shows_the_set_at_the_chosen_level_and_the_triage(weights_with_sets, monkeypatch, tmp_path):
    from derm import catalog

    at = start_app(weights_with_sets, monkeypatch, tmp_path)
    at.button(key=f"example_{catalog.EXAMPLES['MEL']}").click().run()
    assert not at.exception, at.exception
    [result] = list(at.session_state["analyses"].values())
    config = UncertaintyConfig.from_manifest(json.loads((weights_with_sets / "manifest.json").read_text()))
    probs = np.array([[result.probabilities[c] for c in CLASSES]])
    for level in (0.9, 0.95, 0.8):
        if level != 0.9:
            at.radio(key="coverage_level").set_value(level).run()
        expected = config.prediction_sets(probs, level)[0]
        shown = next(m for m in markdown(at).split(" | ") if m.startswith(f"Prediction set at {level:.0%}"))
        assert ", ".join(expected) in shown and f"{config.val_coverage[level]:.1%} measured" in shown
    flagged = bool(malignancy_score(probs)[0] >= config.triage.threshold)
    triage = " | ".join(str(e.value) for e in (at.warning if flagged else at.info))
    assert ("Higher concern" if flagged else "Lower concern") in triage and "not medical advice" in triage
    assert f"{config.triage.val_sensitivity:.0%}" in triage


def test_the_diagnose_page_without_a_section_shows_no_set(weights_without_sets, monkeypatch, tmp_path):
    from derm import catalog

    at = start_app(weights_without_sets, monkeypatch, tmp_path)
    at.button(key=f"example_{catalog.EXAMPLES['NV']}").click().run()
    assert not at.exception and at.subheader and "Prediction set" not in markdown(at)


def test_the_explorer_shows_test_coverage_and_the_images_whose_set_missed(weights_with_sets, monkeypatch, tmp_path):
    from derm.uncertainty.report import missed, test_split_sets

    at = start_app(weights_with_sets, monkeypatch, tmp_path, "app_pages/explorer.py")
    metrics = {m.label: m.value for m in at.metric}
    frame = pd.read_csv(weights_with_sets / "test_predictions.csv")
    config = UncertaintyConfig.from_manifest(json.loads((weights_with_sets / "manifest.json").read_text()))
    sets, measured = test_split_sets(frame, config)
    assert metrics["test coverage"] == f"{sets['covered'].mean():.1%}" == f"{measured['coverage']:.1%}"
    at.toggle(key="explorer_missed").set_value(True).run()
    listed = [d.value for d in at.dataframe if "prediction_set" in d.value.columns]
    assert listed and sorted(listed[-1]["image_id"]) == sorted(missed(sets)["image_id"])


def test_the_variant_is_the_smallest_that_keeps_every_judged_group_near_the_level():
    """fit_conformal adds class widening, and the slots' agreement groups, only where held out on the
    calibration images a class or the disagreeing images fall more than SHORTFALL under the level."""
    from derm.uncertainty.conformal import SHORTFALL, slots_disagree

    even, y_even = synthetic(1000, 11, prior=EVEN_PRIOR)
    _, choice = fit_conformal(even, y_even)
    assert choice["variant"] == "marginal"  # nothing under-covered: no addition pays for its larger sets
    shrunk, y_shrunk = synthetic(1000, 2, shrink={2: 0.05})
    _, choice = fit_conformal(shrunk, y_shrunk)
    held = choice["variants"]
    assert held["marginal"]["held_out"]["per_class"]["BKL"] < 0.9 - SHORTFALL
    assert choice["variant"] == "classes widened"
    assert held["classes widened"]["held_out"]["lowest_judged"] >= 0.9 - SHORTFALL
    probs, y, slots = disagreeing_sample(1500, 7)
    config, choice = fit_conformal(probs, y, disagree=slots_disagree(slots))
    assert choice["variants"]["classes widened"]["held_out"]["slots_disagree"] < 0.9 - SHORTFALL
    assert choice["variant"] == "slot groups and classes widened" and config.by_agreement


def test_a_disagreeing_image_not_calibrated_apart_is_told_the_coverage_may_not_hold():
    from derm.uncertainty.display import for_image, set_sentence

    probs, y, slots = disagreeing_sample(1500, 7)
    section = json.loads(json.dumps(fit_uncertainty(probs, y, slots)))
    config = UncertaintyConfig.from_dict(section)
    assert config.val_coverage_disagree[0.9] == pytest.approx(section["val"]["0.9"]["coverage_slots_disagree"])
    config.conformal.by_agreement = {}  # as if the chosen variant had no agreement groups
    config.val_coverage_disagree = {level: 0.8 for level in config.levels}
    k = int(np.flatnonzero(slots["a"].argmax(1) != slots["b"].argmax(1))[0])
    per_slot = {name: dict(zip(CLASSES, p[k])) for name, p in slots.items()}
    item = for_image(config, dict(zip(CLASSES, probs[k])), 0.9, per_slot)
    assert item.disagree_coverage == 0.8 and "80%" in set_sentence(item) and "may not hold" in set_sentence(item)
    agreeing = {name: dict(zip(CLASSES, slots["a"][k])) for name in slots}
    assert for_image(config, dict(zip(CLASSES, probs[k])), 0.9, agreeing).disagree_coverage is None
