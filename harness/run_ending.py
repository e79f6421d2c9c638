"""How a run ended, for the last record of results.jsonl and the first line of its reports.

After Ctrl-C the report said INCOMPLETE "because of the --cells selection" and nothing said the
run was interrupted or which stages never ran; a second Ctrl-C during cleanup lost summary.md
and report.md. This module gives the session three small pieces (wiring: see the session's
`finish`): `SignalWatch` notes which signal stopped the run, `end_record` words the ending with
the stages selected but never run, and `signals_deferred` lets cleanup finish (bounded) when
the user presses Ctrl-C again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import signal
import sys
import threading
import time
from collections.abc import Iterable
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from types import FrameType
from typing import Any

WATCHED = (signal.SIGINT, signal.SIGTERM)
# pytest's exit codes that say how the session ended
PYTEST_INTERRUPTED = 2
PYTEST_INTERNAL_ERROR = 3


@dataclass
class SignalWatch:
    """Notes the signals that reached the run, then lets the handler already installed (pytest's
    KeyboardInterrupt, the session's SIGTERM-to-KeyboardInterrupt) act as before."""

    seen: list[str] = field(default_factory=list)
    # the handlers it wraps; not in repr: signal.getsignal() formats a handler's repr, and a
    # chain of watches (one per in-process run) would make that slow
    _previous: dict[int, Any] = field(default_factory=dict, repr=False)

    def install(self) -> SignalWatch:
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in WATCHED:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._note)
        return self

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.seen.append(signal.Signals(signum).name)
        previous = self._previous.get(signum)
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL and signum == signal.SIGINT:
            raise KeyboardInterrupt
        elif previous == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

    def uninstall(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    @property
    def first(self) -> str | None:
        return self.seen[0] if self.seen else None


def end_record(
    exit_status: int,
    signal_name: str | None,
    selected: Iterable[tuple[str, str]],
    recorded: Iterable[tuple[str, str]],
) -> dict[str, Any]:
    """The `kind: end` record: completed, interrupted (and by what) or internal_error, with
    every selected (cell, stage) that has no stage record."""
    if signal_name or exit_status == PYTEST_INTERRUPTED:
        status = "interrupted"
    elif exit_status == PYTEST_INTERNAL_ERROR:
        status = "internal_error"
    else:
        status = "completed"
    done = set(recorded)
    not_run = [f"{cell} [{stage}]" for cell, stage in dict.fromkeys(selected) if
               (cell, stage) not in done]
    return {
        "kind": "end",
        "status": status,
        "signal": signal_name,
        "exit_status": int(exit_status),
        "not_run": not_run,
        "ended": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def attempt_stages(records: Iterable[dict[str, Any]]) -> list[tuple[str, str]]:
    """(cell, stage) recorded by this attempt of a run: after its last `resume` line. A resumed
    run interrupted again must list a stage it never reached although an earlier attempt
    recorded it (found by tests/faults: `not_run` was empty after Ctrl-C in a resumed run)."""
    out: list[tuple[str, str]] = []
    for rec in records:
        if rec.get("kind") == "resume":
            out = []
        elif rec.get("kind") == "stage":
            out.append((str(rec.get("cell")), str(rec.get("stage"))))
    return out


def ending_line(record: dict[str, Any], shown: int = 5) -> str:
    """The report's first line for a run that did not complete, else "" (a partial selection
    is a different thing and keeps its own wording)."""
    not_run = list(record.get("not_run", []))
    missing = ""
    if not_run:
        listed = ", ".join(not_run[:shown]) + (f" (+{len(not_run) - shown} more)"
                                               if len(not_run) > shown else "")
        missing = f"; {len(not_run)} selected stage(s) never ran: {listed}"
    if record.get("status") == "interrupted":
        by = f" by {record['signal']}" if record.get("signal") else ""
        return f"INTERRUPTED{by}{missing}"
    if record.get("status") == "internal_error":
        return f"INTERNAL ERROR (exit status {record.get('exit_status')}){missing}"
    return ""


@contextlib.contextmanager
def signals_deferred(bound_s: float = 30.0, say: bool = True) -> Iterator[list[str]]:
    """Cleanup (stop groups, write summary.md and report.md) finishes although the user presses
    Ctrl-C again: SIGINT/SIGTERM are noted, not raised, for `bound_s`; after that a signal
    interrupts as usual, so a hung cleanup can still be stopped. Yields the deferred names."""
    deferred: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield deferred
        return
    start = time.monotonic()
    previous = {sig: signal.getsignal(sig) for sig in WATCHED}

    def _defer(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if time.monotonic() - start >= bound_s:
            raise KeyboardInterrupt(f"{name} during cleanup (past {bound_s:g} s)")
        if say and not deferred:
            print(
                f"harness: {name} during cleanup: writing the reports first (at most "
                f"{bound_s:g} s; send it again after that to stop at once)",
                file=sys.stderr,
            )
        deferred.append(name)

    for sig in WATCHED:
        signal.signal(sig, _defer)
    try:
        yield deferred
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
