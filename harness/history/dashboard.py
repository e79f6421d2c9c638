"""The history database as the dashboard's source (`harness dashboard --db URL`).

harness/report/dashboard_source.py declares what the dashboard reads (`HistorySource`: runs
with their verdicts, and every passed metric's series) and looks up
`harness.history.dashboard_source(url)` and `harness.history.change_points`; both are here.
Verdicts are computed by the report's own `verdict()` on the stored records, so the database
and the run directories give the same page.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa

from harness.history import schema as t
from harness.history.store import History
from harness.history.url import require_existing
from harness.report.dashboard_source import SKIPPED_METRICS
from harness.report.dashboard_source import Point
from harness.report.dashboard_source import RunSummary
from harness.report.dashboard_source import SeriesKey
from harness.report.qualification import Run
from harness.report.qualification import verdict
from harness.results import StageResult
from harness.stats.changepoint import change_points as _change_points


def change_points(values: Sequence[float]) -> list[int]:
    """The dashboard's detector: where a new segment starts (harness.stats.change_points)."""
    return [cp.index for cp in _change_points(list(values))]


class DatabaseSource:
    """Runs and series out of the history database, oldest first."""

    def __init__(self, history: History) -> None:
        self.history = history
        self.problems: list[str] = []

    def runs(self) -> list[RunSummary]:
        r, res = t.runs, t.results
        with self.history.engine.connect() as conn:
            runs = conn.execute(
                sa.select(r.c.run_id, r.c.context, r.c.source_dir, r.c.matrix_name, r.c.backend,
                          r.c.commit, r.c.started).order_by(r.c.started, r.c.run_id)
            ).all()
            rows = conn.execute(
                sa.select(res.c.run_id, res.c.cell, res.c.stage, res.c.status, res.c.message,
                          res.c.metrics, res.c.gates, res.c.device, res.c.backend)
                .order_by(res.c.id)
            ).all()
        results: dict[str, list[StageResult]] = {}
        for row in rows:
            results.setdefault(row.run_id, []).append(StageResult(
                row.cell, row.stage, row.status, row.message, dict(row.metrics or {}),
                list(row.gates or []), device=row.device, backend=row.backend,
            ))
        out = []
        for run in runs:
            stored = results.get(run.run_id, [])
            word, why = verdict(Run(run.run_id, run.context or {}, stored))
            counts = {s: sum(1 for x in stored if x.status == s)
                      for s in ("passed", "failed", "skipped")}
            folder = Path(run.source_dir) if run.source_dir else None
            report = None if folder is None else next(
                (folder / n for n in ("report.html", "report.md") if (folder / n).is_file()), None
            )
            out.append(RunSummary(run.run_id, run.matrix_name or "?", run.backend or "?",
                                  run.commit or "?", run.started, word, why, counts, report))
        return out

    def series(self) -> dict[SeriesKey, list[Point]]:
        m, r, res = t.metrics, t.runs, t.results
        query = (
            sa.select(r.c.matrix_name, m.c.cell, m.c.stage, m.c.name, m.c.run_id, r.c.commit,
                      m.c.value)
            .join(res, res.c.id == m.c.result_id)
            .join(r, r.c.run_id == m.c.run_id)
            .where(res.c.status == "passed")
            .order_by(r.c.started, m.c.run_id)
        )
        out: dict[SeriesKey, list[Point]] = {}
        with self.history.engine.connect() as conn:
            for row in conn.execute(query):
                if row.name in SKIPPED_METRICS:
                    continue
                key = (row.matrix_name or "?", row.cell, f"{row.stage}.{row.name}")
                out.setdefault(key, []).append(Point(row.run_id, row.commit or "?", row.value))
        return out


def dashboard_source(url: str) -> DatabaseSource:
    """Open the history database for the dashboard; a missing SQLite file is an error."""
    require_existing(
        url, "import runs with `harness history import reports/*`, or omit --db to read the "
        "run directories",
    )
    return DatabaseSource(History.open(url))
