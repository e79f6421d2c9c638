"""Accuracy as a proportion with its uncertainty: k correct of n, and a Wilson interval.

Wilson, not the normal (Wald) interval lm-eval's stderr implies: at gsm8k sizes (250-1,319) and
accuracies near 0 or 1 the Wald interval undercovers and can leave [0, 1]; Wilson keeps close to
its nominal coverage there (checked by simulation in tests/unit/test_stats_proportion.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats

CONFIDENCE = 0.95


@dataclass(frozen=True, slots=True)
class Interval:
    """A point estimate and a two-sided confidence interval around it."""

    point: float
    low: float
    high: float
    confidence: float = CONFIDENCE

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def render(self, digits: int = 4) -> str:
        pct = round(self.confidence * 100)
        return f"{self.point:.{digits}g} [{pct}% CI {self.low:.{digits}g}, {self.high:.{digits}g}]"


@dataclass(frozen=True, slots=True)
class Proportion:
    """k successes out of n trials (problems solved out of problems asked)."""

    k: int
    n: int

    def __post_init__(self) -> None:
        if self.n < 0 or not 0 <= self.k <= max(self.n, 0):
            raise ValueError(f"a proportion needs 0 <= k <= n, got k={self.k}, n={self.n}")

    @property
    def value(self) -> float:
        return self.k / self.n if self.n else math.nan

    @classmethod
    def from_rate(cls, rate: float, n: int) -> Proportion:
        """Back from a recorded accuracy and sample count (lm-eval reports the mean, not k)."""
        if not 0.0 <= rate <= 1.0 or math.isnan(rate):
            raise ValueError(f"accuracy {rate!r} is not in [0, 1]")
        return cls(round(rate * n), n)

    def wilson(self, confidence: float = CONFIDENCE) -> Interval:
        return wilson_interval(self.k, self.n, confidence)


def wilson_interval(k: int, n: int, confidence: float = CONFIDENCE) -> Interval:
    """Wilson score interval of k/n (scipy's `binomtest(...).proportion_ci(method="wilson")`)."""
    if n <= 0:
        raise ValueError("a Wilson interval needs n >= 1 problems")
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return Interval(k / n, float(ci.low), float(ci.high), confidence)


def interval_metrics(
    name: str, rate: float, n: int, confidence: float = CONFIDENCE
) -> dict[str, float]:
    """Metrics to record beside an accuracy figure: `<name>_ci95_low/high` and `<name>_n`."""
    ci = Proportion.from_rate(rate, n).wilson(confidence)
    pct = round(confidence * 100)
    return {
        f"{name}_n": n,
        f"{name}_ci{pct}_low": round(ci.low, 4),
        f"{name}_ci{pct}_high": round(ci.high, 4),
    }
