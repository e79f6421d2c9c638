"""FP8 minus BF16 accuracy: the exact McNemar test and Newcombe intervals, paired or not.

Paired (same problems in both cells) is the default: FP8 and BF16 agree on most problems, and
only the discordant ones carry information, so a paired test sees a 3-point drop that two
independent point estimates cannot tell from noise (figures: benchmarks/bench_stats.py).
Intervals are Newcombe's hybrid score intervals built on Wilson's (Newcombe 1998, method 10 for
paired and independent proportions): they keep their coverage at gsm8k sizes where Wald's does not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats

from harness.stats.proportion import CONFIDENCE
from harness.stats.proportion import Interval
from harness.stats.proportion import Proportion
from harness.stats.proportion import wilson_interval
from harness.stats.samples import PairedCounts


def mcnemar_exact(fp8_only: int, bf16_only: int) -> float:
    """Two-sided exact McNemar p-value: a binomial test of the discordant pairs at 1/2.

    The same value as statsmodels' `mcnemar(table, exact=True)`; 1.0 when nothing is discordant.
    """
    discordant = fp8_only + bf16_only
    if discordant == 0:
        return 1.0
    return float(stats.binomtest(bf16_only, discordant, 0.5).pvalue)


def _phi(counts: PairedCounts) -> float:
    """Correlation of the two cells' correctness (0 when a margin is empty)."""
    a, b, c, d = counts.both, counts.fp8_only, counts.bf16_only, counts.neither
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    if margins == 0:
        return 0.0
    return (a * d - b * c) / math.sqrt(margins)


def paired_difference(counts: PairedCounts, confidence: float = CONFIDENCE) -> Interval:
    """FP8 rate minus BF16 rate over the same problems, with Newcombe's paired interval."""
    n = counts.n
    if n == 0:
        raise ValueError("no paired problems")
    p1, p2 = counts.fp8_rate, counts.bf16_rate
    w1 = wilson_interval(counts.both + counts.fp8_only, n, confidence)
    w2 = wilson_interval(counts.both + counts.bf16_only, n, confidence)
    phi = _phi(counts)
    dl1, du1 = p1 - w1.low, w1.high - p1
    dl2, du2 = p2 - w2.low, w2.high - p2
    delta = math.sqrt(max(dl1**2 - 2 * phi * dl1 * du2 + du2**2, 0.0))
    eps = math.sqrt(max(du1**2 - 2 * phi * du1 * dl2 + dl2**2, 0.0))
    diff = p1 - p2
    return Interval(diff, max(diff - delta, -1.0), min(diff + eps, 1.0), confidence)


def unpaired_difference(
    fp8: Proportion, bf16: Proportion, confidence: float = CONFIDENCE
) -> Interval:
    """FP8 rate minus BF16 rate of independent samples, with Newcombe's hybrid score interval."""
    w1, w2 = fp8.wilson(confidence), bf16.wilson(confidence)
    diff = w1.point - w2.point
    low = diff - math.hypot(w1.point - w1.low, w2.high - w2.point)
    high = diff + math.hypot(w1.high - w1.point, w2.point - w2.low)
    return Interval(diff, max(low, -1.0), min(high, 1.0), confidence)


@dataclass(frozen=True, slots=True)
class PairedTest:
    """Everything the paired verdict is decided from, kept for the report."""

    counts: PairedCounts
    difference: Interval  # FP8 - BF16
    p_value: float  # exact McNemar, two-sided

    @property
    def drop(self) -> float:
        """How much worse FP8 is (positive: FP8 solved fewer problems)."""
        return -self.difference.point


def paired_test(counts: PairedCounts, confidence: float = CONFIDENCE) -> PairedTest:
    return PairedTest(
        counts,
        paired_difference(counts, confidence),
        mcnemar_exact(counts.fp8_only, counts.bf16_only),
    )
