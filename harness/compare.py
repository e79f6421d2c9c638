"""Compare a run with a baseline run: per cell and metric, and regression checks like
`--compare-fail throughput.output_throughput:-5%` (pytest-benchmark's compare-fail, per metric)."""

from __future__ import annotations

import argparse
import fnmatch
import math
from collections.abc import Iterable
from dataclasses import dataclass

from harness.results import StageResult


@dataclass(frozen=True)
class RegressionCheck:
    """`stage.metric:-5%` (relative) or `stage.metric:-0.02` (absolute): the worst change allowed.

    The sign says which way is bad: `-5%` fails when the metric drops by more than 5 %,
    `+10%` when it grows by more than 10 % (latencies). The metric may be a glob
    (`throughput.p99_ttft_ms@*`).
    """

    metric: str
    limit: float
    relative: bool

    def fails(self, base: float, value: float) -> str | None:
        change = value - base
        if self.relative:
            if base == 0:
                return None
            change = change / abs(base) * 100.0
        worse = change < self.limit if self.limit < 0 else change > self.limit
        if not worse:
            return None
        unit = "%" if self.relative else ""
        return f"{change:+.3g}{unit} (allowed {self.limit:+g}{unit})"


def parse_compare_fail(value: str) -> RegressionCheck:
    """`throughput.output_throughput:-5%` -> RegressionCheck; bad input quotes the value."""
    metric, sep, limit = value.rpartition(":")
    if not sep or "." not in metric or not limit:
        raise argparse.ArgumentTypeError(
            f"--compare-fail {value!r}: expected <stage>.<metric>:<signed limit>[%], "
            "e.g. throughput.output_throughput:-5% or accuracy.exact_match_strict:-0.02"
        )
    relative = limit.endswith("%")
    try:
        number = float(limit.rstrip("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--compare-fail {value!r}: {limit!r} is not a number"
        ) from None
    if number == 0 or limit[0] not in "+-":
        raise argparse.ArgumentTypeError(
            f"--compare-fail {value!r}: the limit needs a sign for the bad direction (-5% or +10%)"
        )
    return RegressionCheck(metric, number, relative)


@dataclass(frozen=True)
class MetricDelta:
    cell: str
    metric: str  # "<stage>.<metric>"
    base: float
    value: float
    failure: str | None = None

    @property
    def change_pct(self) -> float:
        return math.nan if self.base == 0 else (self.value - self.base) / abs(self.base) * 100.0


def _numeric(results: Iterable[StageResult]) -> dict[tuple[str, str], float]:
    out = {}
    for r in results:
        if r.status != "passed":
            continue
        for name, value in r.metrics.items():
            if (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and name != "stage_wall_s"
            ):
                out[(r.cell, f"{r.stage}.{name}")] = float(value)
    return out


def compare(
    base: Iterable[StageResult],
    current: Iterable[StageResult],
    checks: Iterable[RegressionCheck] = (),
) -> list[MetricDelta]:
    """Every metric both runs measured for the same cell (ids carry the device, so a g2 cell is
    never compared with a g3 one), with the first failing check's message."""
    checks = list(checks)
    old, new = _numeric(base), _numeric(current)
    deltas = []
    for key in sorted(old.keys() & new.keys()):
        cell, metric = key
        failure = None
        for check in checks:
            if fnmatch.fnmatchcase(metric, check.metric) or metric.split("@")[0] == check.metric:
                failure = check.fails(old[key], new[key])
                if failure:
                    break
        deltas.append(MetricDelta(cell, metric, old[key], new[key], failure))
    return deltas


def render_compare(deltas: list[MetricDelta], base_run: str, run: str) -> str:
    lines = [
        f"# {run} vs baseline {base_run}",
        "",
        "| cell | metric | baseline | now | change | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for d in deltas:
        pct = "n/a" if math.isnan(d.change_pct) else f"{d.change_pct:+.1f}%"
        verdict = f"REGRESSION {d.failure}" if d.failure else "ok"
        lines.append(
            f"| {d.cell} | {d.metric} | {d.base:.4g} | {d.value:.4g} | {pct} | {verdict} |"
        )
    if len(lines) == 4:
        lines.append("| (no metric measured by both runs) | | | | | |")
    return "\n".join(lines) + "\n"
