"""The session's side of the history: best-effort writes that never cost a result.

results.jsonl is written first and stays the record of truth. A database that is down, locked
or misconfigured costs one warning line (the first failure) and a summary at the end naming
what to run later (`harness history import reports/<run>`); the run goes on either way.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.history.store import History
from harness.history.url import HistoryError
from harness.history.url import safe
from harness.results import StageResult

GIVE_UP_AFTER = 3  # consecutive failures, then no more tries in this run


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


class HistoryWriter:
    """Records a run into the history, best-effort; every call returns whether it was stored."""

    def __init__(self, url: str, warn: Callable[[str], None] = _stderr, timeout_s: float = 5.0):
        self.url = safe(url)
        self._url = url
        self._warn = warn
        self._timeout_s = timeout_s
        self._history: History | None = None
        self._context: Mapping[str, Any] | None = None
        self._source_dir: Path | str = ""
        self._run_stored = False
        self.failed = 0  # records (the run context, results) not written
        self.stored = 0
        self.first_error = ""
        self._consecutive = 0
        self._gave_up = False

    def _db(self) -> History:
        if self._history is None:
            self._history = History.open(self._url, self._timeout_s)
        return self._history

    def _failure(self, exc: HistoryError, what: str) -> None:
        self._consecutive += 1
        if self._consecutive >= GIVE_UP_AFTER:
            self._gave_up = True  # a silent server must not cost a timeout per result
        if not self.first_error:
            self.first_error = str(exc)
            self._warn(
                f"harness: history not written ({what}): {exc}; results.jsonl has everything, "
                "load it later with `harness history import <run dir>`"
            )

    def record_run(self, context: Mapping[str, Any], source_dir: Path | str = "") -> bool:
        """Store the run's context line; kept and retried before results if it failed."""
        self._context, self._source_dir = context, source_dir
        stored = self._store_run()
        self.failed += not stored
        return stored

    def _store_run(self) -> bool:
        if self._context is None or self._gave_up:
            return False
        try:
            self._db().record_run(self._context, self._source_dir)
        except HistoryError as exc:
            self._failure(exc, "run context")
            return False
        self._run_stored = True
        self._consecutive = 0
        return True

    def record_result(self, run_id: str, result: StageResult) -> bool:
        """Store one stage result (after its line is in results.jsonl)."""
        if not self._gave_up and (self._run_stored or self._store_run()):
            try:
                self._db().record_result(run_id, result)
            except HistoryError as exc:
                self._failure(exc, f"{result.cell} {result.stage}")
            else:
                self.stored += 1
                self._consecutive = 0
                return True
        self.failed += 1
        return False

    def reader(self) -> History | None:
        """The same database for the gates' queries; None (after the one warning) when it is
        unusable, so a gate records `unknown` rather than the run failing."""
        if self._gave_up:
            return None
        try:
            return self._db()
        except HistoryError as exc:
            self._failure(exc, "baseline queries")
            return None

    def close(self, run_dir: Path | str = "") -> str | None:
        """Release the database; a one-line summary when anything was not written."""
        if self._history is not None:
            self._history.close()
            self._history = None
        if not self.failed:
            return None
        where = run_dir or "<run dir>"
        return (
            f"history: {self.failed} record(s) not written to {self.url} ({self.first_error}); "
            f"results.jsonl is complete: run `harness history import {where}` when it is back"
        )
