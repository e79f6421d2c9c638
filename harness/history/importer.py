"""`harness history import reports/*`: load runs' results.jsonl into the history, idempotently.

The record of truth is each run's results.jsonl; the database is an index of it. Importing a run
twice stores it once (by run id, then by cell and stage), and a run the database missed in part
(it was down or locked) gets only its missing results. A torn last line (a killed run) is left
out, as the run store does; any other line that is not JSON refuses that file, naming the line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

from harness.history.store import History
from harness.history.url import HistoryError
from harness.results import StageResult

RESULTS = "results.jsonl"
_FIELDS = set(StageResult.__dataclass_fields__)


class CorruptRun(HistoryError):
    """A results.jsonl that cannot be read as a run; names the file and line."""


@dataclass
class ImportSummary:
    """What an import did; `problems` are one line each, naming the file."""

    runs_new: int = 0
    runs_seen: int = 0
    results_new: int = 0
    results_seen: int = 0
    skipped: list[str] = field(default_factory=list)  # paths that are not runs
    problems: list[str] = field(default_factory=list)

    def render(self) -> str:
        lines = [
            f"imported {self.runs_new} new run(s) ({self.runs_seen} already stored), "
            f"{self.results_new} new result(s) ({self.results_seen} already stored)"
        ]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} path(s) that are not runs: "
                         + ", ".join(self.skipped))
        lines += [f"not imported: {p}" for p in self.problems]
        return "\n".join(lines)


def read_run(path: Path) -> tuple[dict[str, Any], list[StageResult]]:
    """The context line and stage results of one results.jsonl; CorruptRun when unusable."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CorruptRun(f"{path}: unreadable ({exc})") from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    records: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):
                break  # torn last line: the run was killed while writing it
            raise CorruptRun(
                f"{path}:{number}: not JSON ({exc.msg}); fix or delete that line, then import again"
            ) from None
        if not isinstance(record, dict):
            raise CorruptRun(f"{path}:{number}: expected a JSON object per line")
        records.append(record)
    if not records or records[0].get("kind") != "run" or not records[0].get("run_id"):
        raise CorruptRun(
            f"{path}: the first line is not a run context "
            '({"kind": "run", "run_id": ...}): is it a harness results.jsonl?'
        )
    results = []
    for number, rec in enumerate(records[1:], 2):
        if rec.get("kind") != "stage":
            continue
        try:
            results.append(StageResult(**{k: v for k, v in rec.items() if k in _FIELDS}))
        except TypeError as exc:
            raise CorruptRun(f"{path}: record {number} is not a stage result ({exc})") from None
    return records[0], results


def _results_file(path: Path) -> Path | None:
    if path.is_dir():
        candidate = path / RESULTS
        return candidate if candidate.is_file() else None
    return path if path.name == RESULTS else None


def import_runs(history: History, paths: Iterable[Path]) -> ImportSummary:
    """Import each run directory (or results.jsonl); other paths are listed as skipped."""
    summary = ImportSummary()
    stored = set(history.run_ids())
    for path in paths:
        source = _results_file(path)
        if source is None:
            if not path.exists():
                summary.problems.append(f"{path}: no such file or directory")
            else:
                summary.skipped.append(path.name)
            continue
        try:
            context, results = read_run(source)
        except CorruptRun as exc:
            summary.problems.append(str(exc))
            continue
        run_id = str(context["run_id"])
        known = run_id in stored
        history.record_run(context, source_dir=source.parent.resolve())
        stored.add(run_id)
        summary.runs_seen += known
        summary.runs_new += not known
        for result in results:
            if history.record_result(run_id, result):
                summary.results_new += 1
            else:
                summary.results_seen += 1
    return summary
