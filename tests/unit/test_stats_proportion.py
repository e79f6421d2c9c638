"""Wilson intervals: values, refusals, and coverage near 95% by simulation (fixed seeds)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness import stats


def test_wilson_interval_matches_the_closed_form():
    k, n, z = 212, 250, 1.959963984540054
    p = k / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    ci = stats.wilson_interval(k, n)
    assert ci.point == pytest.approx(p)
    assert (ci.low, ci.high) == pytest.approx((center - half, center + half), abs=1e-9)


def test_wilson_interval_stays_inside_zero_one_at_the_edges():
    none, all_ = stats.wilson_interval(0, 250), stats.wilson_interval(250, 250)
    assert none.low == 0.0 and 0 < none.high < 0.02
    assert all_.high == pytest.approx(1.0) and 0.98 < all_.low < 1


@pytest.mark.parametrize(
    ("k", "n"), [(3, 2), (-1, 10)], ids=["k-above-n", "negative-k"]
)
def test_proportion_refuses_impossible_counts(k, n):
    with pytest.raises(ValueError, match="0 <= k <= n"):
        stats.Proportion(k, n)


def test_wilson_interval_refuses_zero_problems():
    with pytest.raises(ValueError, match="n >= 1"):
        stats.wilson_interval(0, 0)


def test_from_rate_recovers_k_from_a_recorded_accuracy():
    assert stats.Proportion.from_rate(0.848, 250) == stats.Proportion(212, 250)
    with pytest.raises(ValueError, match="not in"):
        stats.Proportion.from_rate(1.2, 250)


def test_interval_metrics_names_sit_beside_the_figure():
    out = stats.interval_metrics("exact_match_strict", 0.848, 250)
    assert out["exact_match_strict_n"] == 250
    assert out["exact_match_strict_ci95_low"] < 0.848 < out["exact_match_strict_ci95_high"]


@pytest.mark.parametrize(
    ("n", "p"),
    [(250, 0.5), (250, 0.85), (250, 0.97), (1319, 0.85), (40, 0.8)],
    ids=["n250-p50", "n250-p85", "n250-p97", "n1319-p85", "n40-p80"],
)
def test_wilson_coverage_is_near_95_percent_by_simulation(n, p):
    rng = np.random.default_rng(20261204)
    draws = rng.binomial(n, p, 3000)
    cache: dict[int, stats.Interval] = {}
    covered = sum(cache.setdefault(int(k), stats.wilson_interval(int(k), n)).contains(p) for k in draws)
    assert 0.925 <= covered / len(draws) <= 0.975
