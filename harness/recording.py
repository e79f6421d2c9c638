"""A pytest report of a stage test as a StageResult: status, the message a person reads, figures.

Pure functions of the report and the recorder, so the session only decides *when* to record.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from harness.cell import Cell
from harness.cell import Stage
from harness.results import StageResult
from harness.stages.base import Recorder


def stage_result(
    cell: Cell, stage: Stage, report: pytest.TestReport, rec: Recorder, backend: str, root: Path
) -> StageResult:
    """The record of `stage` of `cell` from its final report (artifacts relative to `root`)."""
    status = {"passed": "passed", "failed": "failed", "skipped": "skipped"}[report.outcome]
    # a node stage that refers to its node phase's record keeps that record's gates, and says so
    ref = rec.referenced
    gates = [g.as_dict() for g in rec.gates] or (list(ref[0].gates) if ref else [])
    return StageResult(
        cell=cell.id,
        stage=stage.value,
        status=status,
        message=message(report) or (rec.notes[-1] if ref and rec.notes else ""),
        metrics=dict(rec.metrics),
        gates=gates,
        artifacts=relative(rec.artifacts, root),
        started=started(report),
        duration_s=round(report.duration, 3),
        device=cell.device,
        backend=backend,
    )


def started(report: pytest.TestReport) -> str:
    """When the stage's test began (the report is made at its end)."""
    start = getattr(report, "start", None) or time.time() - report.duration
    return dt.datetime.fromtimestamp(start, dt.UTC).isoformat(timespec="seconds")


def message(report: pytest.TestReport) -> str:
    """The reason a person reads: the skip reason, the failure text (short), or a crash line."""
    if report.passed:
        return ""
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    text = report.longreprtext.strip()
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None and text.count("\n") > 20:  # a real traceback: keep its last word
        return str(crash.message).removeprefix("Failed: ")
    return text.removeprefix("Failed: ")[-4000:]


def one_line(text: str, cell_id: str, limit: int = 400) -> str:
    """A failure as one line for later stages' skip reason: no cell prefix, hints kept."""
    joined = " ".join(line.strip() for line in text.splitlines() if line.strip())
    joined = joined.removeprefix(f"{cell_id} ")
    return joined if len(joined) <= limit else joined[: limit - 3] + "..."


def relative(artifacts: Mapping[str, str], root: Path) -> dict[str, str]:
    out = {}
    for name, path in artifacts.items():
        p = Path(path)
        out[name] = str(p.relative_to(root)) if p.is_relative_to(root) else str(p)
    return out
