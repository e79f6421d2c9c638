"""The history schema (current version), one for SQLite and PostgreSQL, in SQLAlchemy Core.

  runs            one row per run: its context line (matrix and hash, commit, stack versions,
                  host fingerprint) and where its directory was (`source_dir`)
  results         one row per (run, cell, stage): status, message, gates, artifacts, metrics
  metrics         one row per numeric metric of a result, for series queries
  schema_version  the versions applied (migrate.py), newest last

Rows are written one result per transaction, so a killed writer leaves whole results only;
`results.n_metrics` lets a check see that every result has all of its metric rows.
"""

from __future__ import annotations

import sqlalchemy as sa

SCHEMA_VERSION = 2

metadata = sa.MetaData()

schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("applied", sa.String(40), nullable=False),
)

runs = sa.Table(
    "runs",
    metadata,
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
    # version 2: the host fingerprint and the stack, so baselines compare like with like
    sa.Column("host_class", sa.String(200), nullable=False, server_default=""),
    sa.Column("device", sa.String(40), nullable=False, server_default=""),
    sa.Column("driver", sa.String(80), nullable=False, server_default=""),
    sa.Column("firmware", sa.String(80), nullable=False, server_default=""),
    sa.Column("stack_key", sa.String(16), nullable=False, server_default=""),
    sa.Index("ix_runs_like", "host_class", "stack_key"),
)

results = sa.Table(
    "results",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "run_id", sa.String(64), sa.ForeignKey("runs.run_id", ondelete="CASCADE"), nullable=False
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
    # version 2
    sa.Column("n_metrics", sa.Integer, nullable=False, server_default="0"),
    sa.UniqueConstraint("run_id", "cell", "stage", name="uq_results_run_cell_stage"),
    sa.Index("ix_results_cell_stage", "cell", "stage"),
)

metrics = sa.Table(
    "metrics",
    metadata,
    sa.Column(
        "result_id",
        sa.Integer,
        sa.ForeignKey("results.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("cell", sa.String(300), nullable=False),
    sa.Column("stage", sa.String(40), nullable=False),
    sa.Column("value", sa.Float, nullable=False),
    sa.Index("ix_metrics_series", "cell", "stage", "name"),
)
