"""Throughput repeats: median of an odd count, range, t interval (coverage by simulation)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness import stats


def test_median_of_odd_repeats_is_one_measured_value():
    s = stats.summarize_repeats([1012.0, 998.5, 1020.1])
    assert (s.median, s.low, s.high, s.n) == (1012.0, 998.5, 1020.1, 3)
    assert s.ci_low < s.median < s.ci_high


@pytest.mark.parametrize("values", [[], [1.0, 2.0]], ids=["none", "even"])
def test_an_even_or_empty_count_of_repeats_is_refused(values):
    with pytest.raises(ValueError, match="odd number"):
        stats.summarize_repeats(values)


def test_a_single_repeat_has_no_interval():
    s = stats.summarize_repeats([5.0])
    assert s.median == 5.0 and math.isnan(s.ci_low)


def test_repeat_metrics_keep_the_concurrency_suffix_last():
    out = stats.repeat_metrics("output_throughput@c32", stats.summarize_repeats([3.0, 1.0, 2.0]))
    assert out["output_throughput@c32"] == 2.0
    assert out["output_throughput_min@c32"] == 1.0 and out["output_throughput_max@c32"] == 3.0
    assert out["output_throughput_repeats@c32"] == 3
    assert "output_throughput_ci95_low@c32" in out


def test_combine_repeats_summarises_figures_and_sums_counts():
    runs = [
        {"output_throughput@c1": 10.0, "completed@c1": 4, "failed@c1": 0},
        {"output_throughput@c1": 12.0, "completed@c1": 4, "failed@c1": 1},
        {"output_throughput@c1": 11.0, "completed@c1": 4, "failed@c1": 0},
    ]
    out = stats.combine_repeats(runs)
    assert out["output_throughput@c1"] == 11.0 and out["completed@c1"] == 12
    assert out["failed@c1"] == 1


@pytest.mark.parametrize("repeats", [3, 5], ids=["3-repeats", "5-repeats"])
def test_t_interval_covers_the_mean_near_95_percent_by_simulation(repeats):
    rng = np.random.default_rng(31)
    hits = 0
    for _ in range(3000):
        s = stats.summarize_repeats((1000 * (1 + 0.03 * rng.standard_normal(repeats))).tolist())
        hits += s.ci_low <= 1000 <= s.ci_high
    assert 0.935 <= hits / 3000 <= 0.965
