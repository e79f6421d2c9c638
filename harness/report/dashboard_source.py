"""Where the dashboard reads history from: a small interface, the run directories behind it now.

`HistorySource` is all the dashboard needs (runs with their verdicts, and per cell and metric
the series over runs). `RunDirSource` reads `reports/<run>/results.jsonl`; the history
database (harness/history, being built) plugs in by providing the same two methods, and
`open_source(db_url, ...)` picks it when `--db` is given.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from typing import Protocol

from harness.errors import HarnessError
from harness.report.facts import sanitize
from harness.report.qualification import Run
from harness.report.qualification import load_run
from harness.report.qualification import verdict
from harness.results import ResultStore

SKIPPED_METRICS = frozenset({"stage_wall_s"})


@dataclass(frozen=True)
class RunSummary:
    """One run as the dashboard lists it."""

    run_id: str
    matrix: str
    backend: str
    commit: str
    started: str
    verdict: str
    why: str
    counts: dict[str, int]
    report: Path | None  # the run's report.html (or report.md), when it exists


@dataclass(frozen=True)
class Point:
    """One value of a series: which run measured it, at which commit."""

    run_id: str
    commit: str
    value: float


SeriesKey = tuple[str, str, str]  # (matrix, cell, "stage.metric")


class HistorySource(Protocol):
    """What the dashboard reads: the history database implements the same two methods."""

    def runs(self) -> list[RunSummary]:
        """Every run, oldest first."""
        ...

    def series(self) -> dict[SeriesKey, list[Point]]:
        """Every numeric metric of every passed stage, oldest first."""
        ...


# A change-point detector: the values of one series -> indices where a new segment starts.
ChangePoints = Callable[[Sequence[float]], list[int]]


class RunDirSource:
    """History from run directories; an unreadable run is listed as such, not fatal."""

    def __init__(self, results_dir: Path) -> None:
        self.store = ResultStore(results_dir)
        self._runs: list[Run] | None = None
        self.problems: list[str] = []

    def _load(self) -> list[Run]:
        if self._runs is None:
            self._runs = []
            for run_id in self.store.runs():
                try:
                    run = load_run(self.store, run_id)
                except (OSError, TypeError, ValueError) as exc:
                    self.problems.append(f"{run_id}: unreadable results.jsonl ({exc})")
                    continue
                results, problems = sanitize(run.results)
                self.problems += [f"{run_id}: {p}" for p in problems]
                self._runs.append(Run(run.run_id, run.context, results))
        return self._runs

    def runs(self) -> list[RunSummary]:
        out = []
        for run in self._load():
            word, why = verdict(run)
            counts = {s: sum(1 for r in run.results if r.status == s)
                      for s in ("passed", "failed", "skipped")}
            folder = self.store.root / run.run_id
            report = next((folder / n for n in ("report.html", "report.md")
                           if (folder / n).is_file()), None)
            c = run.context
            out.append(RunSummary(run.run_id, str(c.get("matrix_name", "?")),
                                  str(c.get("backend", "?")), str(c.get("commit", "?")),
                                  str(c.get("started", "")), word, why, counts, report))
        return out

    def series(self) -> dict[SeriesKey, list[Point]]:
        out: dict[SeriesKey, list[Point]] = {}
        for run in self._load():
            matrix, commit = str(run.context.get("matrix_name", "?")), str(
                run.context.get("commit", "?"))
            for r in run.results:
                if r.status != "passed":
                    continue
                for name, value in r.metrics.items():
                    if (isinstance(value, int | float) and not isinstance(value, bool)
                            and name not in SKIPPED_METRICS):
                        key = (matrix, r.cell, f"{r.stage}.{name}")
                        out.setdefault(key, []).append(Point(run.run_id, commit, float(value)))
        return out


def open_source(db_url: str | None, results_dir: Path) -> HistorySource:
    """The run directories, or with `--db` the history database when it is installed."""
    if db_url is None:
        return RunDirSource(results_dir)
    try:
        module: Any = importlib.import_module("harness.history")
        reader = module.dashboard_source
    except (ImportError, AttributeError):
        raise HarnessError(
            f"--db {db_url}: the history database has no dashboard reader here "
            "(harness.history.dashboard_source(url) -> HistorySource); "
            f"omit --db to read the run directories under {results_dir}"
        ) from None
    source: HistorySource = reader(db_url)
    return source


def default_change_points() -> ChangePoints | None:
    """The history package's detector when it provides one (`harness.history.change_points`),
    else None: the dashboard then says that change points were not computed."""
    try:
        module: Any = importlib.import_module("harness.history")
    except ImportError:
        return None
    detector = getattr(module, "change_points", None)
    return detector if callable(detector) else None
