"""Series and baselines out of the history: only like with like (host class, device, stack).

A metric is named `<stage>.<name>` as in `--compare-fail` (`throughput.output_throughput@c32`);
a bare name matches it in any stage. Cell patterns are shell globs over cell ids.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from harness.cell import bf16_twin_id
from harness.history import schema as t
from harness.history.context import RunContext


@dataclass(frozen=True)
class Point:
    """One run's value of one metric of one cell."""

    run_id: str
    started: str
    cell: str
    metric: str  # <stage>.<name>
    value: float
    status: str
    commit: str
    host_class: str
    device: str
    stack_key: str
    versions: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredResult:
    """A stored stage result with the run it belongs to."""

    run: RunContext
    cell: str
    stage: str
    status: str
    metrics: Mapping[str, Any]
    artifacts: Mapping[str, str]
    source_dir: str

    def artifact_path(self, name: str) -> Path | None:
        """Where an artifact of this result is, if its run directory is still on this host."""
        rel = self.artifacts.get(name)
        if not rel or not self.source_dir:
            return None
        path = Path(self.source_dir) / rel
        return path if path.exists() else None


def _like(glob: str) -> str:
    """A LIKE pattern that selects at least the glob's matches (fnmatch then filters)."""
    escaped = glob.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    out = escaped.replace("*", "%").replace("?", "_")
    return out.split("[", 1)[0] + ("%" if "[" in out else "")


def _split_metric(metric: str) -> tuple[str | None, str]:
    stage, dot, name = metric.partition(".")
    if dot and stage.isidentifier() and "@" not in stage:
        return stage, name
    return None, metric


def series(
    conn: sa.Connection,
    cell_glob: str,
    metric: str,
    *,
    last: int | None = None,
    like: RunContext | None = None,
    passing_only: bool = False,
    before_run: str | None = None,
) -> dict[str, list[Point]]:
    """Per matching cell, its values of `metric` oldest first (the `last` N of each)."""
    stage, name = _split_metric(metric)
    m, r, res = t.metrics, t.runs, t.results
    query = (
        sa.select(
            m.c.run_id, r.c.started, m.c.cell, m.c.stage, m.c.value, res.c.status, r.c.commit,
            r.c.host_class, r.c.device, r.c.stack_key, r.c.context,
        )
        .join(res, res.c.id == m.c.result_id)
        .join(r, r.c.run_id == m.c.run_id)
        .where(m.c.name == name, m.c.cell.like(_like(cell_glob), escape="\\"))
        .order_by(r.c.started, m.c.run_id)
    )
    if stage is not None:
        query = query.where(m.c.stage == stage)
    if passing_only:
        query = query.where(res.c.status == "passed")
    if before_run is not None:
        query = query.where(m.c.run_id < before_run)
    if like is not None:
        query = query.where(
            r.c.host_class == like.host_class,
            r.c.device == like.device,
            r.c.stack_key == like.stack_key,
        )
    out: dict[str, list[Point]] = {}
    for row in conn.execute(query):
        if not fnmatch.fnmatchcase(row.cell, cell_glob):
            continue
        versions = (row.context or {}).get("versions") or {}
        out.setdefault(row.cell, []).append(
            Point(
                row.run_id, row.started, row.cell, f"{row.stage}.{name}", float(row.value),
                row.status, row.commit, row.host_class, row.device, row.stack_key, versions,
            )
        )
    if last is not None:
        out = {cell: points[-last:] for cell, points in out.items()}
    return dict(sorted(out.items()))


def last_passing(
    conn: sa.Connection, cell: str, stage: str, like: RunContext, before_run: str | None = None
) -> StoredResult | None:
    """The newest passing result of `cell`/`stage` from a run comparable with `like`."""
    r, res = t.runs, t.results
    query = (
        sa.select(res.c.cell, res.c.stage, res.c.status, res.c.metrics, res.c.artifacts,
                  r.c.context, r.c.source_dir)
        .join(r, r.c.run_id == res.c.run_id)
        .where(
            res.c.cell == cell,
            res.c.stage == stage,
            res.c.status == "passed",
            r.c.host_class == like.host_class,
            r.c.device == like.device,
            r.c.stack_key == like.stack_key,
            r.c.run_id != like.run_id,
        )
        .order_by(r.c.started.desc(), r.c.run_id.desc())
        .limit(1)
    )
    if before_run is not None:
        query = query.where(r.c.run_id < before_run)
    row = conn.execute(query).first()
    if row is None:
        return None
    return StoredResult(
        RunContext.from_record(row.context), row.cell, row.stage, row.status,
        row.metrics or {}, row.artifacts or {}, row.source_dir,
    )


def last_passing_bf16(
    conn: sa.Connection, fp8_cell: str, like: RunContext, stage: str = "accuracy"
) -> StoredResult | None:
    """The last passing BF16 run of the same model, device, parallelism and stack."""
    return last_passing(conn, bf16_twin_id(fp8_cell), stage, like)
