"""The run against its history: noise-band regressions and change points, for report.md.

"Did anything regress since last night, beyond noise?": every gated metric of every passing
stage is held against the noise band learned from the last passing runs of the same cell on
the same host class and stack (harness.stats.noise), with the run's `--compare-fail` limit as
the practical floor where it names the metric; the change points of those series are named in
sentences. Only metrics a `--compare-fail` names can fail the run; the rest are reported.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from harness.compare import RegressionCheck
from harness.results import StageResult

SERIES_RUNS = 30  # how far back the change points are looked for


@dataclass(frozen=True)
class AgainstHistory:
    """Report lines, and the regressions that fail the run (their metric has a --compare-fail)."""

    lines: list[str]
    failing: list[str]


def floors_of(gated: Iterable[str], checks: Sequence[RegressionCheck]) -> dict[str, float]:
    """`stage.metric` -> floor in percent: the --compare-fail limit where one names it, else 0
    (the learned band alone) for every gated metric."""
    floors = {key: 0.0 for key in gated}
    for check in checks:
        if check.relative:
            floors[check.metric] = abs(check.limit)
    return floors


def against_history(
    history: Any,
    like: Any,
    results: Sequence[StageResult],
    gated: Iterable[str],
    checks: Sequence[RegressionCheck],
) -> AgainstHistory:
    """Judge this run's passing results against the history database (`history`: a
    harness.history.store.History, `like`: this run's RunContext)."""
    from harness.history.baselines import history_regressions
    from harness.history.show import change_lines
    from harness.history.url import HistoryError

    floors = floors_of(gated, checks)
    strict = [c.metric for c in checks]
    lines: list[str] = []
    failing: list[str] = []
    judged = 0
    for result in results:
        if result.status != "passed":
            continue
        for verdict in history_regressions(history, result, like, floors):
            if verdict.status == "unknown":
                continue
            judged += 1
            if verdict.status == "failed":
                lines.append(f"- **regression** {verdict.message}")
                if any(fnmatch.fnmatchcase(verdict.metric, p) or verdict.metric.split("@")[0]
                       == p for p in strict):
                    failing.append(verdict.message)
    changes: list[str] = []
    for key in sorted(floors):
        stage = key.partition(".")[0]
        cells = {r.cell for r in results if r.stage == stage}
        for cell in sorted(cells):
            try:
                series = history.series(cell, key, SERIES_RUNS, like=like)
            except HistoryError:
                continue
            changes += [f"- {line}" for line in change_lines(series)]
    head = (
        f"{judged} gated figure(s) judged against the noise of their history "
        f"({like.host_class or 'this host class'}, same stack); "
    )
    head += f"{len(lines)} beyond it." if judged else "none had enough history yet."
    out = [head, *lines]
    if changes:
        out += ["", "Change points:", "", *changes]
    return AgainstHistory(out, failing)

