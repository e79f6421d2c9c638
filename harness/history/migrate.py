"""Schema versions and the path between them: each step runs in one transaction, in order.

A new database gets every step; an older one gets the steps it lacks; a newer one (written by a
later harness) is refused rather than misread. Steps spell out their DDL as it was at that
version (like Alembic revisions), so schema.py can move on without rewriting history. On
PostgreSQL an advisory lock, on SQLite BEGIN IMMEDIATE, keeps two hosts from migrating at once.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from harness.history.schema import SCHEMA_VERSION
from harness.history.schema import schema_version
from harness.history.url import HistoryError
from harness.history.url import safe

_LOCK_ID = 1_300_013  # pg_advisory_xact_lock key of the history schema


def _v1(conn: sa.Connection) -> None:
    """The first schema: runs, results, metrics."""
    md = sa.MetaData()
    sa.Table(
        "schema_version", md,
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("applied", sa.String(40), nullable=False),
    )
    sa.Table(
        "runs", md,
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("started", sa.String(40), nullable=False, server_default=""),
        sa.Column("matrix", sa.Text, nullable=False, server_default=""),
        sa.Column("matrix_name", sa.String(200), nullable=False, server_default=""),
        sa.Column("matrix_sha256", sa.String(64), nullable=False, server_default=""),
        sa.Column("commit", sa.String(80), nullable=False, server_default=""),
        sa.Column("backend", sa.String(40), nullable=False, server_default=""),
        sa.Column("harness_version", sa.String(40), nullable=False, server_default=""),
        sa.Column("host", sa.String(200), nullable=False, server_default=""),
        sa.Column("context", sa.JSON, nullable=False),
        sa.Column("source_dir", sa.Text, nullable=False, server_default=""),
    )
    sa.Table(
        "results", md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "run_id", sa.String(64), sa.ForeignKey("runs.run_id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("cell", sa.String(300), nullable=False),
        sa.Column("stage", sa.String(40), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("message", sa.Text, nullable=False, server_default=""),
        sa.Column("device", sa.String(40), nullable=False, server_default=""),
        sa.Column("backend", sa.String(40), nullable=False, server_default=""),
        sa.Column("started", sa.String(40), nullable=False, server_default=""),
        sa.Column("duration_s", sa.Float, nullable=False, server_default="0"),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("gates", sa.JSON, nullable=False),
        sa.Column("artifacts", sa.JSON, nullable=False),
        sa.UniqueConstraint("run_id", "cell", "stage", name="uq_results_run_cell_stage"),
        sa.Index("ix_results_cell_stage", "cell", "stage"),
    )
    sa.Table(
        "metrics", md,
        sa.Column(
            "result_id", sa.Integer, sa.ForeignKey("results.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("cell", sa.String(300), nullable=False),
        sa.Column("stage", sa.String(40), nullable=False),
        sa.Column("value", sa.Float, nullable=False),
        sa.Index("ix_metrics_series", "cell", "stage", "name"),
    )
    md.create_all(conn)


def _v2(conn: sa.Connection) -> None:
    """Host fingerprint and stack key on runs (backfilled from the context), n_metrics."""
    for name, size in (
        ("host_class", 200), ("device", 40), ("driver", 80), ("firmware", 80), ("stack_key", 16)
    ):
        conn.execute(
            sa.text(f"ALTER TABLE runs ADD COLUMN {name} VARCHAR({size}) NOT NULL DEFAULT ''")
        )
    conn.execute(sa.text("ALTER TABLE results ADD COLUMN n_metrics INTEGER NOT NULL DEFAULT 0"))
    conn.execute(sa.text("CREATE INDEX ix_runs_like ON runs (host_class, stack_key)"))
    from harness.history.context import RunContext

    rows = conn.execute(sa.text("SELECT run_id, context FROM runs")).all()
    for run_id, raw in rows:
        ctx = RunContext.from_record(_json(raw))
        conn.execute(
            sa.text(
                "UPDATE runs SET host_class = :h, device = :d, driver = :dr, firmware = :f, "
                "stack_key = :s WHERE run_id = :r"
            ),
            {"h": ctx.host_class, "d": ctx.device, "dr": ctx.driver, "f": ctx.firmware,
             "s": ctx.stack_key, "r": run_id},
        )
    conn.execute(
        sa.text(
            "UPDATE results SET n_metrics = "
            "(SELECT COUNT(*) FROM metrics WHERE metrics.result_id = results.id)"
        )
    )


def _json(raw: Any) -> dict[str, Any]:
    value = json.loads(raw) if isinstance(raw, str) else raw
    return value if isinstance(value, dict) else {}


MIGRATIONS: tuple[tuple[int, Callable[[sa.Connection], None]], ...] = ((1, _v1), (2, _v2))
assert MIGRATIONS[-1][0] == SCHEMA_VERSION


def current_version(conn: sa.Connection) -> int:
    if not sa.inspect(conn).has_table("schema_version"):
        return 0
    found = conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar()
    return int(found or 0)


def migrate(engine: sa.Engine, target: int = SCHEMA_VERSION) -> int:
    """Bring the database to `target` (default: the current schema); returns the version."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_ID})
        version = current_version(conn)
        if version > SCHEMA_VERSION:
            raise HistoryError(
                f"{safe(engine.url)}: history schema version {version} is newer than this "
                f"harness knows ({SCHEMA_VERSION}): upgrade the harness, or use another "
                "--history-db"
            )
        for step_version, step in MIGRATIONS:
            if version < step_version <= target:
                step(conn)
                conn.execute(
                    schema_version.insert().values(
                        version=step_version,
                        applied=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    )
                )
                version = step_version
    return version

