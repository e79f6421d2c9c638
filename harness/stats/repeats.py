"""Throughput judged on repeats: the median of an odd number of runs, with min, max and a CI.

The median (vLLM perf-eval's rule) keeps one slow or fast outlier out of the recorded figure; the
interval is Student's t interval of the mean (AIPerf reports the same), so a reader sees how far
the repeats spread. An odd count keeps the median one measured value, not an average of two.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats

from harness.stats.proportion import CONFIDENCE


@dataclass(frozen=True, slots=True)
class RepeatSummary:
    """The figures of N repeats of one measurement."""

    median: float
    low: float  # the smallest repeat
    high: float  # the largest repeat
    n: int
    ci_low: float  # Student-t interval of the mean (nan for a single repeat)
    ci_high: float


def summarize_repeats(values: Sequence[float], confidence: float = CONFIDENCE) -> RepeatSummary:
    """Median, range and t interval of repeats; an even or empty count is refused."""
    if not values or len(values) % 2 == 0:
        raise ValueError(
            f"throughput repeats must be an odd number (got {len(values)}): the median of an "
            "odd number of runs is one measured run"
        )
    xs = [float(v) for v in values]
    if any(math.isnan(x) for x in xs):
        raise ValueError("a throughput repeat is NaN")
    n = len(xs)
    median = statistics.median(xs)
    if n == 1:
        return RepeatSummary(median, xs[0], xs[0], 1, math.nan, math.nan)
    mean = statistics.fmean(xs)
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * statistics.stdev(xs) / math.sqrt(n)
    return RepeatSummary(median, min(xs), max(xs), n, mean - half, mean + half)


def _suffixed(name: str, extra: str) -> str:
    """`output_throughput@c32` + `min` -> `output_throughput_min@c32` (the suffix stays last)."""
    base, at, where = name.partition("@")
    return f"{base}_{extra}{at}{where}"


def repeat_metrics(name: str, summary: RepeatSummary, digits: int = 4) -> dict[str, float]:
    """The figure (median) under its usual name, and its spread beside it."""
    out = {name: round(summary.median, digits)}
    out[_suffixed(name, "min")] = round(summary.low, digits)
    out[_suffixed(name, "max")] = round(summary.high, digits)
    out[_suffixed(name, "repeats")] = summary.n
    if summary.n > 1:
        out[_suffixed(name, "ci95_low")] = round(summary.ci_low, digits)
        out[_suffixed(name, "ci95_high")] = round(summary.ci_high, digits)
    return out


def combine_repeats(
    runs: Sequence[Mapping[str, float]], confidence: float = CONFIDENCE
) -> dict[str, float]:
    """Per-metric median and spread of N parsed `vllm bench serve` results of one concurrency.

    Counts (`completed@c32` ...) and any metric absent from a repeat are summed or skipped as
    they come: only figures every repeat measured are summarised.
    """
    if not runs:
        raise ValueError("no throughput repeats to combine")
    out: dict[str, float] = {}
    names = set(runs[0]).intersection(*runs[1:])
    for name in sorted(names):
        values = [r[name] for r in runs]
        if name.split("@")[0] in _COUNTS:
            out[name] = sum(values)
        else:
            out.update(repeat_metrics(name, summarize_repeats(values, confidence)))
    return out


_COUNTS = frozenset(
    {"completed", "failed", "num_prompts", "total_input_tokens", "total_output_tokens"}
)
