"""The gate's thresholds chosen together: the whole gate keeps its share of every dermoscopic source."""

import numpy as np
import pytest

from derm.gate.thresholds import CheckScores, Thresholds, choose_thresholds, refused, thresholds_at


def scores(n: int, seed: int, shift: float = 0.0, checks: int = 4) -> CheckScores:
    """Independent check scores, so refusals from different checks add up as in the shipped gate."""
    rng = np.random.default_rng(seed)
    nan = np.full(n, np.nan)
    return CheckScores(probability=rng.uniform(size=n) - shift,
                       distance=rng.normal(10 + 3 * shift, 2, n),
                       device=rng.uniform(size=n) - shift if checks > 2 else nan,
                       objects=rng.uniform(size=n) + shift if checks > 3 else nan,
                       grey=np.zeros(n, bool))


def test_whole_gate_keeps_its_share_of_every_source_where_one_at_a_time_does_not():
    sources = {"ham": scores(2000, 0), "atlas": scores(300, 1, shift=0.1)}
    one_at_a_time = thresholds_at(sources, 0.01)  # each check alone keeps 99%
    assert max(refused(s, one_at_a_time).mean() for s in sources.values()) > 0.015  # four checks add up
    chosen, share = choose_thresholds(sources, keep=0.99)
    assert share < 0.01
    for s in sources.values():
        assert refused(s, chosen).mean() <= 0.01
    stricter = thresholds_at(sources, share * 1.5)
    assert any(refused(s, stricter).mean() > 0.01 for s in sources.values())  # the strictest that keeps 99%


def test_the_most_lenient_source_sets_each_check():
    sources = {"ham": scores(2000, 0), "atlas": scores(2000, 1, shift=0.3)}
    t = thresholds_at(sources, 0.05)
    assert t.min_probability == pytest.approx(np.quantile(sources["atlas"].probability, 0.05))
    assert t.object_threshold == pytest.approx(np.quantile(sources["atlas"].objects, 0.95))


def test_a_missing_check_refuses_nothing_and_grey_refuses_always():
    s = scores(500, 2, checks=2)
    chosen, _ = choose_thresholds({"ham": s}, keep=0.99)
    assert chosen.net_min_probability == -np.inf and chosen.object_threshold == np.inf
    assert refused(s, chosen).mean() <= 0.01
    s.grey[:10] = True
    lenient = Thresholds(-np.inf, np.inf, -np.inf, np.inf)
    assert refused(s, lenient).sum() == 10


def test_a_stricter_keep_never_refuses_more():
    sources = {"ham": scores(1000, 3), "atlas": scores(200, 4, shift=0.2)}
    loose, _ = choose_thresholds(sources, keep=0.98)
    strict, _ = choose_thresholds(sources, keep=0.995)
    negatives = scores(400, 5, shift=1.0)
    assert refused(negatives, strict).mean() <= refused(negatives, loose).mean()
