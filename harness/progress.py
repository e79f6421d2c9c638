"""Live progress of a running stage on pytest's terminal, never in results or JUnit.

A stage calls `progress.update("accuracy: 37/100 problems")` as often as it likes. On a TTY the
line is rewritten in place; without one (CI logs) a line is printed when the phase changes
(the text with its numbers taken out differs from the last one, or `phase()` was called) and
otherwise at most once per `CI_INTERVAL_S`, so a 20-minute stage leaves a few readable lines.
Outside a pytest run (nothing installed) every call is a no-op.

Wiring (plugin): `config.pluginmanager.register(ProgressPlugin(config), "harness-progress")`
in `pytest_configure`; the plugin binds the terminal reporter and clears the line before
pytest prints a test's outcome.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from collections.abc import Iterator
from contextlib import AbstractContextManager
from contextlib import contextmanager
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from typing import Literal

import pytest

CI_INTERVAL_S = 30.0
PREFIX = "[harness] "
_NUMBER = re.compile(r"\d+(\.\d+)?")
# a tqdm bar as lm-eval and `vllm bench serve` print it: "... 37/100 [00:12<00:20, ...]"
_TQDM = re.compile(r"(\d+)/(\d+) \[")


@dataclass(frozen=True)
class Emit:
    """What to do with an update: rewrite the line in place, or print a new line."""

    how: Literal["rewrite", "line"]
    text: str


def phase_key(text: str) -> str:
    """The phase of a progress text: itself with its numbers taken out."""
    return _NUMBER.sub("#", text)


class Throttle:
    """Which updates reach the terminal; pure logic with an injected clock (tested alone)."""

    def __init__(self, tty: bool, clock: Callable[[], float] = time.monotonic,
                 interval_s: float = CI_INTERVAL_S) -> None:
        self.tty = tty
        self.clock = clock
        self.interval_s = interval_s
        self._key: str | None = None
        self._last = float("-inf")

    def feed(self, text: str, new_phase: bool = False) -> Emit | None:
        now = self.clock()
        if self.tty:
            return Emit("rewrite", text)
        key = phase_key(text)
        if new_phase or key != self._key or now - self._last >= self.interval_s:
            self._key, self._last = key, now
            return Emit("line", text)
        return None

    def reset(self) -> None:
        """A test ended: the next update starts a new phase."""
        self._key, self._last = None, float("-inf")


class Progress:
    """Writes what the Throttle lets through to pytest's terminal reporter, with capture off."""

    def __init__(self, reporter: Any, capture: Any = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.reporter = reporter
        self.capture = capture
        self.throttle = Throttle(bool(getattr(reporter, "isatty", False)), clock)
        self._lock = threading.Lock()
        self._shown = False  # an in-place line is on the terminal

    def _uncaptured(self) -> AbstractContextManager[Any]:
        if self.capture is None:
            return nullcontext()
        disabled: AbstractContextManager[Any] = self.capture.global_and_fixture_disabled()
        return disabled

    def update(self, text: str, new_phase: bool = False) -> None:
        with self._lock:
            emit = self.throttle.feed(text, new_phase)
            if emit is None:
                return
            with self._uncaptured():
                if emit.how == "rewrite":
                    if not self._shown:
                        self.reporter.ensure_newline()
                    self.reporter.rewrite(PREFIX + text, erase=True)
                    self._shown = True
                else:
                    self.reporter.ensure_newline()
                    self.reporter.write_line(PREFIX + text)

    def done(self) -> None:
        """Clear an in-place line so pytest's own output starts on a clean line."""
        with self._lock:
            self.throttle.reset()
            if not self._shown:
                return
            with self._uncaptured():
                self.reporter.rewrite("", erase=True)
            self._shown = False
            if hasattr(self.reporter, "currentfspath"):
                self.reporter.currentfspath = None  # pytest re-prints the file name next


def log_count(path: Path, window: int = 4096) -> tuple[int, int] | None:
    """The last tqdm count (done, total) in a client's log, or None (no bar yet, no file)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - window))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return None
    found = _TQDM.findall(text)
    return (int(found[-1][0]), int(found[-1][1])) if found else None


def client_text(label: str, log_path: Path, unit: str, elapsed_s: float) -> str:
    """`accuracy: 37/100 problems (log: ...)` from the client's bar, else the time so far."""
    count = log_count(log_path)
    done_text = f"{count[0]}/{count[1]} {unit}" if count else f"running, {elapsed_s:.0f} s"
    return f"{label}: {done_text} (log: {log_path})"


_current: Progress | None = None


def update(text: str) -> None:
    """Show what the stage waits for or how far it is (no-op outside a pytest run)."""
    if _current is not None:
        _current.update(text)


def phase(text: str) -> None:
    """Start a new phase: printed even in CI, whatever the time since the last line."""
    if _current is not None:
        _current.update(text, new_phase=True)


def done() -> None:
    if _current is not None:
        _current.done()


@contextmanager
def installed(progress: Progress | None) -> Iterator[Progress | None]:
    """Make `progress` the target of the module functions for a block (tests, plugin)."""
    global _current
    previous, _current = _current, progress
    try:
        yield progress
    finally:
        _current = previous


class FileReporter:
    """What a `pytest -n` worker's Progress writes to: lines appended to a file the controller
    follows (a worker's own terminal goes nowhere the user sees)."""

    isatty = False

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def ensure_newline(self) -> None:
        pass

    def write_line(self, text: str) -> None:
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(text.replace("\n", " ") + "\n")

    def rewrite(self, text: str, erase: bool = False) -> None:  # never on a file: no TTY
        self.write_line(text)


class Follower:
    """The controller of a `pytest -n` run prints its workers' progress lines as they come,
    each with its worker's name, from a daemon thread (xdist's loop only wakes on events)."""

    def __init__(self, directory: Path, reporter: Any, poll_s: float = 1.0) -> None:
        self.directory = directory
        self.reporter = reporter
        self.poll_s = poll_s
        self._offsets: dict[Path, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="harness-progress", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)
        self.drain()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.drain()

    def drain(self) -> None:
        """Print every complete line written since the last call."""
        for path in sorted(self.directory.glob("*.log")):
            start = self._offsets.get(path, 0)
            try:
                with path.open("rb") as fh:
                    fh.seek(start)
                    chunk = fh.read()
            except OSError:
                continue
            complete = chunk[: chunk.rfind(b"\n") + 1]
            self._offsets[path] = start + len(complete)
            for line in complete.decode("utf-8", "replace").splitlines():
                self.reporter.ensure_newline()
                self.reporter.write_line(f"[{path.stem}] {line}")


class ProgressPlugin:
    """Binds the module functions to this run's terminal reporter. In a `pytest -n` run
    (`shared` is the run's progress directory) a worker writes its lines there and the
    controller follows them; without a directory a worker binds nothing (no-op)."""

    def __init__(self, config: pytest.Config, shared: Path | None = None) -> None:
        self.config = config
        self.shared = shared
        self._ctx: AbstractContextManager[Progress | None] | None = None
        self._follower: Follower | None = None

    @pytest.hookimpl(trylast=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        worker = getattr(self.config, "workerinput", None)
        if worker is not None:
            if self.shared is not None:
                sink = FileReporter(self.shared / f"{worker.get('workerid', 'gw')}.log")
                self._ctx = installed(Progress(sink))
                self._ctx.__enter__()
            return
        if reporter is None:
            return
        if self.shared is not None:
            self._follower = Follower(self.shared, reporter)
            self._follower.start()
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        self._ctx = installed(Progress(reporter, capture))
        self._ctx.__enter__()

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        done()

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        if self._follower is not None:
            self._follower.stop()
            self._follower = None
        if self._ctx is not None:
            self._ctx.__exit__(None, None, None)
            self._ctx = None
