"""Change points over a metric's history: where a nightly series shifted, found by `ruptures`.

Binary segmentation with a least-squares cost on the series scaled by its robust noise
(estimated from the spread of successive differences, so a step itself does not inflate it), and
a BIC-like penalty of `PENALTY x log(n)`. Chosen by a comparison on synthetic nightly series
(benchmarks/bench_stats.py, 3% noise): ruptures BinSeg, ruptures PELT and MongoDB's E-Divisive
(`signal-processing-algorithms`, run in a side venv) find 94% of 5% steps within about 4.5 runs
and every 10% step within 3, with 0.07-0.10 false change points per 100 runs; BinSeg ran the
comparison in 4 s against E-Divisive's 9 s and PELT's 38 s, and ruptures installs beside numpy 2
and scipy 1.17 while E-Divisive and Apache Otava pin older numpy/scipy (Otava also pulls cloud
clients), which would downgrade the vLLM/torch stack sharing the venv.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

PENALTY = 2.0  # x log(n): 0.07 false change points per 100 steady runs (bench_stats.py)
MIN_SIZE = 3  # a segment has at least this many runs
MIN_POINTS = 2 * MIN_SIZE


@dataclass(frozen=True, slots=True)
class ChangePoint:
    """The series moved at `index` (the first point of the new segment)."""

    index: int
    before: float  # median of the segment before
    after: float  # median of the segment from index on

    @property
    def change_pct(self) -> float:
        return math.nan if self.before == 0 else (self.after - self.before) / abs(self.before) * 100


def robust_noise(values: Sequence[float] | np.ndarray[Any, Any]) -> float:
    """Noise sd from successive differences (MAD-based): a few steps barely move it."""
    diffs = np.diff(np.asarray(values, dtype=float))
    if diffs.size == 0:
        return 0.0
    mad = float(np.median(np.abs(diffs - np.median(diffs))))
    return 1.4826 * mad / math.sqrt(2)


def change_points(
    values: Sequence[float], *, penalty: float = PENALTY, min_size: int = MIN_SIZE
) -> list[ChangePoint]:
    """Where the series shifted in level, oldest first; fewer than 2 x min_size points: none."""
    import ruptures

    xs = np.asarray(values, dtype=float)
    if xs.size < 2 * min_size or np.isnan(xs).any():
        return []
    sigma = robust_noise(xs)
    if sigma == 0:
        sigma = max(float(np.std(xs)), 1e-12 * max(1.0, float(np.abs(xs).max())))
    scaled = (xs - float(np.median(xs))) / sigma
    algo = ruptures.Binseg(model="l2", min_size=min_size, jump=1).fit(scaled.reshape(-1, 1))
    ends = [int(e) for e in algo.predict(pen=penalty * math.log(xs.size))]
    bounds = [0, *ends]
    out = []
    for start, cut, stop in zip(bounds, bounds[1:], bounds[2:], strict=False):
        before = statistics.median(xs[start:cut].tolist())
        after = statistics.median(xs[cut:stop].tolist())
        out.append(ChangePoint(cut, before, after))
    return out
