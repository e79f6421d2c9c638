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

from harness.history.context import RunContext
from harness.history.context import differences
from harness.history.context import local_fingerprint
from harness.history.importer import ImportSummary
from harness.history.importer import import_runs
from harness.history.query import Point
from harness.history.query import StoredResult
from harness.history.store import History
from harness.history.url import HistoryError
from harness.history.url import default_url
from harness.history.url import parse_url
from harness.history.writer import HistoryWriter

__all__ = [
    "History",
    "HistoryError",
    "HistoryWriter",
    "ImportSummary",
    "Point",
    "RunContext",
    "StoredResult",
    "default_url",
    "differences",
    "import_runs",
    "local_fingerprint",
    "parse_url",
]
