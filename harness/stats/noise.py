"""Regression against history with a noise band learned from the series itself.

The band is the robust spread of the last K passing runs of the same cell on the same host class
and stack: 1.4826 x MAD (the normal-consistent median absolute deviation), as a percentage of
their median, times `z`. A metric that always moves 4% then does not alarm at 3%, and a steady
one alarms at less; the user's `--compare-fail` limit stays the practical floor (a change
smaller than it never alarms, however steady the metric). MAD, not the standard deviation: one
bad night in the window must not widen the band for the next K nights.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from harness.stats.verdict import Verdict

Bad = Literal["drop", "rise"]
WINDOW = 20  # last K passing runs (K=10: 2.2 false alarms per 100 runs at z 3.5; K=20: 0.5)
Z = 3.5  # band half-width in robust standard deviations (benchmarks/bench_stats.py)
MIN_POINTS = 5  # fewer earlier runs than this: the noise is not learned yet
MAD_TO_SD = 1.4826


@dataclass(frozen=True, slots=True)
class NoiseBand:
    """How far a metric may move from its recent median before it counts as a regression."""

    center: float  # median of the window
    spread_pct: float  # robust standard deviation, % of the median
    threshold_pct: float  # max(z * spread_pct, floor_pct)
    n: int  # points in the window
    floor_pct: float
    learned: bool  # False: fewer than MIN_POINTS points, only the floor applies


def learn_band(
    history: Sequence[float],
    *,
    floor_pct: float = 0.0,
    window: int = WINDOW,
    z: float = Z,
    min_points: int = MIN_POINTS,
) -> NoiseBand | None:
    """The band of the last `window` values (oldest first); None when there is no history."""
    xs = [float(v) for v in history[-window:] if not math.isnan(float(v))]
    if not xs:
        return None
    center = statistics.median(xs)
    learned = len(xs) >= min_points
    spread = 0.0
    if learned and center != 0:
        mad = statistics.median(abs(x - center) for x in xs)
        spread = MAD_TO_SD * mad / abs(center) * 100.0
    threshold = max(z * spread, floor_pct)
    return NoiseBand(center, spread, threshold, len(xs), floor_pct, learned)


def bad_direction(metric: str) -> Bad:
    """Latencies (`*_ms`) are bad when they rise; throughputs and accuracies when they drop."""
    return "rise" if metric.split("@")[0].endswith("_ms") else "drop"


def regression_verdict(
    metric: str,
    value: float,
    history: Sequence[float],
    *,
    floor_pct: float = 0.0,
    bad: Bad | None = None,
    window: int = WINDOW,
    z: float = Z,
    min_points: int = MIN_POINTS,
    cell: str = "",
    reference: str = "history",
) -> Verdict:
    """Is `value` beyond the noise band of `history` (passing runs, oldest first)?

    Unknown when there is no history, or when the band is not learned yet and no floor is set.
    """
    bad = bad or bad_direction(metric)
    band = learn_band(history, floor_pct=floor_pct, window=window, z=z, min_points=min_points)
    if band is None or (not band.learned and floor_pct <= 0) or band.center == 0:
        n = 0 if band is None else band.n
        return Verdict(
            metric, "unknown", value, "noise band",
            f"{cell}: {metric}: not judged against history: {n} comparable passing run(s), "
            f"{min_points} needed to learn the noise (or set a --compare-fail floor)",
            reference,
        )
    change = (value - band.center) / abs(band.center) * 100.0
    worse = -change if bad == "drop" else change
    failed = worse > band.threshold_pct
    sign = "-" if bad == "drop" else "+"
    how = (
        f"{z:g} x robust sd {band.spread_pct:.2g}%" if band.learned
        else f"noise not learned yet ({band.n} of {min_points} runs)"
    )
    bound = f"{sign}{band.threshold_pct:.3g}% of median {band.center:.4g}"
    message = (
        f"{cell}: {metric} = {value:.4g}, {change:+.1f}% vs the median {band.center:.4g} of the "
        f"last {band.n} passing runs (band {sign}{band.threshold_pct:.2g}%: {how}, floor "
        f"{band.floor_pct:g}%) {'REGRESSION' if failed else 'ok'}"
    )
    details: dict[str, float | int | str] = {
        "change_pct": round(change, 3),
        "band_pct": round(band.threshold_pct, 3),
        "spread_pct": round(band.spread_pct, 3),
        "window": band.n,
    }
    return Verdict(
        metric, "failed" if failed else "passed", value, bound, message, reference, details
    )
