"""Result records and their on-disk store: one JSON line per stage, flushed as each stage ends.

Record keys (schema_version 1), one object per line of `reports/<run-id>/results.jsonl`:
  kind            "run" (first line: the run's context), "stage", or "end" (last line: how the
                  run ended, status completed | interrupted | internal_error, signal, exit_status,
                  not_run: the selected stages that never ran; absent when the run was killed)
  run_id          the run's id, e.g. 20261123-161500-042-a1b2 (sorts by start time)
  cell            cell id, e.g. "tiny-moe/cpu/tp1-ep2/fp8-kv-fp8"          (stage records)
  stage           preflight | collectives | calibration | serving | accuracy | throughput
  status          passed | failed | skipped
  message         failure or skip reason ('' when passed)
  metrics         {name: number | string}: what the stage measured
  gates           [{metric, value, passed, bound, message}]
  artifacts       {name: path relative to the run directory}
  started, duration_s   wall-clock start (ISO 8601) and duration in seconds
  device, backend the cell's device and the backend that ran it
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.fileio import write_atomic

SCHEMA_VERSION = 1
__all__ = ["write_atomic"]  # re-exported: harness.fileio is where it lives


@dataclass
class StageResult:
    """What one stage of one cell produced."""

    cell: str
    stage: str
    status: str
    message: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    gates: list[dict[str, Any]] = field(default_factory=list)
    artifacts: dict[str, str] = field(default_factory=dict)
    started: str = ""
    duration_s: float = 0.0
    device: str = ""
    backend: str = ""
    kind: str = "stage"
    run_id: str = ""
    schema_version: int = SCHEMA_VERSION

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def new_run_id(now: dt.datetime | None = None) -> str:
    """`20261123-161500-042-a1b2`: sorts by start time to the millisecond, unique beyond it."""
    now = now or dt.datetime.now()
    return f"{now:%Y%m%d-%H%M%S}-{now.microsecond // 1000:03d}-{secrets.token_hex(2)}"


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class RunStore:
    """The directory of one run: results.jsonl appended record by record, artifacts beside it."""

    def __init__(self, root: Path, run_id: str) -> None:
        self.root = root
        self.run_id = run_id
        self.dir = root / run_id
        self.path = self.dir / "results.jsonl"

    def open(self, context: dict[str, Any]) -> None:
        """Create the run directory (never reusing one) and write the run's context line."""
        self.dir.mkdir(parents=True, exist_ok=False)
        self._append(
            {"kind": "run", "run_id": self.run_id, "schema_version": SCHEMA_VERSION, **context}
        )

    def reopen(self, record: dict[str, Any]) -> None:
        """Continue an existing run (--resume): its directory and records stay, `record` (kind
        "resume") says when and with what selection it went on."""
        if not self.path.is_file():
            raise HarnessError(f"--resume {self.run_id}: {self.path} does not exist")
        self._append({"kind": "resume", "run_id": self.run_id, **record})

    def append(self, result: StageResult) -> None:
        result.run_id = self.run_id
        self._append(result.as_dict())

    def append_record(self, record: dict[str, Any]) -> None:
        """A line of another kind (a work unit as it ran, the cluster a run planned on)."""
        self._append({"run_id": self.run_id, **record})

    def _append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, default=str, sort_keys=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def end(self, record: dict[str, Any]) -> None:
        """The run's last line: how it ended (harness.run_ending.end_record)."""
        self._append({"run_id": self.run_id, **record})

    def latest(self, cell_id: str, stage: str) -> StageResult | None:
        """The last record of `stage` of `cell_id` in this run (any worker's), or None."""
        found = None
        for result in stage_results(self.path):
            if result.cell == cell_id and result.stage == stage:
                found = result
        return found

    def cell_dir(self, cell_id: str, stage: str) -> Path:
        """Where a stage keeps its artifacts: <run>/cells/<cell id with / as __>/<stage>."""
        path = self.dir / "cells" / cell_id.replace("/", "__") / stage
        path.mkdir(parents=True, exist_ok=True)
        return path


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """Records of a results.jsonl; a torn last line (a killed run) is ignored, not fatal."""
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def stage_results(path: Path) -> list[StageResult]:
    """The stage records of a run; a stage run again (--resume) counts once, as its last record
    (in the order the stages first ran)."""
    fields = set(StageResult.__dataclass_fields__)
    latest: dict[tuple[str, str], StageResult] = {}
    for rec in read_records(path):
        if rec.get("kind") == "stage":
            result = StageResult(**{k: v for k, v in rec.items() if k in fields})
            latest[(result.cell, result.stage)] = result
    return list(latest.values())


class ResultStore:
    """All runs under a reports directory: list, load, latest. Runs are never overwritten."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def runs(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "results.jsonl").is_file())

    def load(self, run_id: str) -> list[StageResult]:
        return stage_results(self.root / run_id / "results.jsonl")

    def latest(self) -> str | None:
        runs = self.runs()
        return runs[-1] if runs else None
