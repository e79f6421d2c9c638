"""Change points with ruptures: an injected shift is found where it was made (simulated)."""

from __future__ import annotations

import numpy as np
import pytest

from harness import stats


def _series(rng: np.random.Generator, n: int, step: float = 0.0, at: int = 0) -> list[float]:
    xs = 1000 * (1 + 0.03 * rng.standard_normal(n))
    xs[at:] *= 1 - step
    return xs.tolist()


def test_a_10_percent_step_is_found_at_its_run_in_nearly_every_series():
    rng = np.random.default_rng(41)
    found = 0
    for _ in range(100):
        cps = stats.change_points(_series(rng, 50, 0.10, 30))
        found += any(abs(cp.index - 30) <= 2 and cp.change_pct < -5 for cp in cps)
    assert found >= 95


def test_a_5_percent_step_is_found_in_most_series():
    rng = np.random.default_rng(42)
    found = sum(
        any(abs(cp.index - 30) <= 3 for cp in stats.change_points(_series(rng, 50, 0.05, 30)))
        for _ in range(100)
    )
    assert found >= 80


def test_steady_series_rarely_show_a_change_point():
    rng = np.random.default_rng(43)
    false = sum(len(stats.change_points(_series(rng, 100))) for _ in range(60))
    assert false <= 15  # in 6,000 steady runs (benchmark: about 0.1 per 100 runs)


def test_the_change_point_reports_medians_on_both_sides():
    xs = [100.0, 101.0, 99.0, 100.5, 99.5, 100.0, 90.0, 91.0, 89.0, 90.5, 89.5, 90.0]
    (cp,) = stats.change_points(xs)
    assert cp.index == 6
    assert cp.before == pytest.approx(100.0) and cp.after == pytest.approx(90.0)
    assert cp.change_pct == pytest.approx(-10.0)


def test_short_or_constant_series_have_no_change_point():
    assert stats.change_points([1.0, 2.0, 3.0]) == []
    assert stats.change_points([5.0] * 20) == []
