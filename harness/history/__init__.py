"""The history database: every stage result of every run, for nightly trends and baselines.

    from harness.history import History, HistoryWriter

    writer = HistoryWriter(url)              # the session: best-effort, never loses a result
    writer.record_run(context_line, run_dir)
    writer.record_result(run_id, stage_result)
    print(writer.close(run_dir) or "")

    h = History.open(url)                    # queries (gates, `harness history show`)
    h.series("llama*", "throughput.output_throughput@c32", last=30)
    h.last_passing_bf16(fp8_cell_id, RunContext.from_record(context_line))

SQLite by default (`reports/history.sqlite`), PostgreSQL for a fleet; one schema with a version
table and migrations (migrate.py). results.jsonl stays the per-run record of truth.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING
from typing import Any

if TYPE_CHECKING:
    from harness.history.context import RunContext
    from harness.history.context import differences
    from harness.history.context import local_fingerprint
    from harness.history.dashboard import change_points
    from harness.history.dashboard import dashboard_source
    from harness.history.importer import ImportSummary
    from harness.history.importer import import_runs
    from harness.history.query import Point
    from harness.history.query import StoredResult
    from harness.history.store import History
    from harness.history.url import HistoryError
    from harness.history.url import default_url
    from harness.history.url import parse_url
    from harness.history.writer import HistoryWriter

# loaded on first use: `harness --help` and `harness plan` need no SQLAlchemy
_LAZY = {
    "History": "harness.history.store",
    "HistoryError": "harness.history.url",
    "HistoryWriter": "harness.history.writer",
    "ImportSummary": "harness.history.importer",
    "Point": "harness.history.query",
    "RunContext": "harness.history.context",
    "StoredResult": "harness.history.query",
    "change_points": "harness.history.dashboard",
    "dashboard_source": "harness.history.dashboard",
    "default_url": "harness.history.url",
    "differences": "harness.history.context",
    "import_runs": "harness.history.importer",
    "local_fingerprint": "harness.history.context",
    "parse_url": "harness.history.url",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'harness.history' has no attribute {name!r}")


__all__ = [
    "History",
    "HistoryError",
    "HistoryWriter",
    "ImportSummary",
    "Point",
    "RunContext",
    "StoredResult",
    "change_points",
    "dashboard_source",
    "default_url",
    "differences",
    "import_runs",
    "local_fingerprint",
    "parse_url",
]
