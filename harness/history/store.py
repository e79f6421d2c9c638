"""The history database: runs and stage results of every run, and the queries gates need.

    h = History.open("reports/history.sqlite")      # or postgresql://... ; migrates on open
    h.record_run(context_line, source_dir=run_dir)   # idempotent by run id
    h.record_result(run_id, stage_result)            # idempotent by (run, cell, stage)
    h.series("llama*/g2/*", "throughput.output_throughput@c32", last=30)

Each write is one transaction, so a writer killed mid-way leaves whole results or none.
Errors reaching the database become HistoryError naming the URL (password hidden).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.exc import SQLAlchemyError

from harness.history import query
from harness.history import schema as t
from harness.history.context import RunContext
from harness.history.migrate import migrate
from harness.history.query import Point
from harness.history.query import StoredResult
from harness.history.url import HistoryError
from harness.history.url import create_engine
from harness.history.url import parse_url
from harness.history.url import safe
from harness.results import StageResult


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null (PostgreSQL's JSON refuses them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def numeric_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The metrics a series can hold: finite numbers, not booleans."""
    out = {}
    for name, value in metrics.items():
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if numeric and math.isfinite(float(value)):
            out[name] = float(value)
    return out


class History:
    """A history database; open with :meth:`open`."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.url = safe(engine.url)

    @classmethod
    def open(cls, url: str, timeout_s: float = 5.0) -> History:
        """Connect and bring the schema up to date; HistoryError says what went wrong."""
        parsed = parse_url(url)
        engine = create_engine(parsed, timeout_s)
        history = cls(engine)
        with history._errors("open"):
            migrate(engine)
        return history

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except HistoryError:
            raise
        except (SQLAlchemyError, OSError) as exc:
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            raise HistoryError(f"{self.url}: cannot {doing}: {reason}") from None

    # writes ----------------------------------------------------------------
    def record_run(self, context: Mapping[str, Any], source_dir: Path | str = "") -> str:
        """Store a run's context line (the first line of its results.jsonl); returns the id."""
        ctx = RunContext.from_record(context)
        if not ctx.run_id:
            raise HistoryError(f"{self.url}: a run context without run_id cannot be stored")
        row = {
            "run_id": ctx.run_id,
            "started": ctx.started,
            "matrix": ctx.matrix,
            "matrix_name": ctx.matrix_name,
            "matrix_sha256": ctx.matrix_sha256,
            "commit": ctx.commit,
            "backend": ctx.backend,
            "harness_version": ctx.harness_version,
            "host": ctx.host,
            "context": _clean(dict(context)),
            "source_dir": str(source_dir),
            "host_class": ctx.host_class,
            "device": ctx.device,
            "driver": ctx.driver,
            "firmware": ctx.firmware,
            "stack_key": ctx.stack_key,
        }
        with self._errors(f"record run {ctx.run_id}"):
            try:
                with self.engine.begin() as conn:
                    if not self._has_run(conn, ctx.run_id):
                        conn.execute(t.runs.insert().values(**row))
            except IntegrityError:
                pass  # another writer stored it first: the same run, stored once
        return ctx.run_id

    @staticmethod
    def _has_run(conn: sa.Connection, run_id: str) -> bool:
        query = sa.select(t.runs.c.run_id).where(t.runs.c.run_id == run_id)
        return conn.execute(query).first() is not None

    def record_result(self, run_id: str, result: StageResult) -> bool:
        """Store one stage result with its metric rows; False when it was already stored."""
        numbers = numeric_metrics(result.metrics)
        with self._errors(f"record {result.cell} {result.stage} of run {run_id}"):
            try:
                with self.engine.begin() as conn:
                    return self._insert_result(conn, run_id, result, numbers)
            except IntegrityError as exc:
                if "foreign key" in str(exc.orig).lower():
                    raise HistoryError(
                        f"{self.url}: run {run_id} is not stored; record_run first"
                    ) from None
                return False

    def _insert_result(
        self, conn: sa.Connection, run_id: str, r: StageResult, numbers: dict[str, float]
    ) -> bool:
        exists = sa.select(t.results.c.id).where(
            t.results.c.run_id == run_id, t.results.c.cell == r.cell, t.results.c.stage == r.stage
        )
        if conn.execute(exists).first() is not None:
            return False
        inserted = conn.execute(
            t.results.insert().values(
                run_id=run_id,
                cell=r.cell,
                stage=r.stage,
                status=r.status,
                message=r.message,
                device=r.device,
                backend=r.backend,
                started=r.started,
                duration_s=float(r.duration_s or 0.0),
                metrics=_clean(r.metrics),
                gates=_clean(r.gates),
                artifacts=_clean(r.artifacts),
                n_metrics=len(numbers),
            )
        )
        (result_id,) = inserted.inserted_primary_key or (None,)
        if numbers:
            conn.execute(
                t.metrics.insert(),
                [
                    {"result_id": result_id, "name": name, "run_id": run_id, "cell": r.cell,
                     "stage": r.stage, "value": value}
                    for name, value in numbers.items()
                ],
            )
        return True

    # reads -----------------------------------------------------------------
    def run_ids(self) -> list[str]:
        with self._errors("list runs"), self.engine.connect() as conn:
            rows = conn.execute(sa.select(t.runs.c.run_id).order_by(t.runs.c.run_id)).all()
        return [r[0] for r in rows]

    def run_context(self, run_id: str) -> RunContext | None:
        with self._errors(f"read run {run_id}"), self.engine.connect() as conn:
            row = conn.execute(
                sa.select(t.runs.c.context).where(t.runs.c.run_id == run_id)
            ).first()
        return None if row is None else RunContext.from_record(row[0])

    def count(self, table: str) -> int:
        """Rows of one table (`runs`, `results`, `metrics`)."""
        query = sa.select(sa.func.count()).select_from(t.metadata.tables[table])
        with self._errors(f"count {table}"), self.engine.connect() as conn:
            return int(conn.execute(query).scalar() or 0)

    def series(
        self,
        cell_glob: str,
        metric: str,
        last: int | None = None,
        *,
        like: RunContext | None = None,
        passing_only: bool = False,
        before_run: str | None = None,
    ) -> dict[str, list[Point]]:
        """Per cell matching the glob, the metric over runs, oldest first."""
        with self._errors(f"read {metric}"), self.engine.connect() as conn:
            return query.series(
                conn, cell_glob, metric, last=last, like=like, passing_only=passing_only,
                before_run=before_run,
            )

    def baseline_values(
        self, cell: str, metric: str, like: RunContext, window: int = 10
    ) -> list[float]:
        """The last `window` passing values of a cell's metric from comparable earlier runs,
        oldest first: what a noise band is learned from."""
        found = self.series(
            cell, metric, window, like=like, passing_only=True, before_run=like.run_id
        )
        return [p.value for p in found.get(cell, [])]

    def last_passing(self, cell: str, stage: str, like: RunContext) -> StoredResult | None:
        with self._errors(f"read {cell} {stage}"), self.engine.connect() as conn:
            return query.last_passing(conn, cell, stage, like)

    def last_passing_bf16(
        self, fp8_cell: str, like: RunContext, stage: str = "accuracy"
    ) -> StoredResult | None:
        """The last passing BF16 run of the same model, device, parallelism and stack."""
        with self._errors(f"read the BF16 twin of {fp8_cell}"), self.engine.connect() as conn:
            return query.last_passing_bf16(conn, fp8_cell, like, stage)
