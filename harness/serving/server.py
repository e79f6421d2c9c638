"""One OpenAI-compatible server's life: start, ready, smoke request, watch, stop.

The server runs in its own process group (harness.process), so stopping it stops the API
process, the engine core and every worker. It is ready when /health answers 200 *and* every
readiness mark the backend asked for is in the log (FP8 cells: "Preparing model with INC",
proof that INC really converted the model). While it starts, and while clients run against it,
the process and the log are watched: an exit or a known fatal line fails at once with the log
tail and a hint instead of waiting for a timeout.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

from harness import progress
from harness.errors import HarnessError
from harness.process import Command
from harness.process import Running
from harness.process import site
from harness.process import start
from harness.process import tail
from harness.serving.http import get_status
from harness.serving.http import port_in_use
from harness.serving.http import post_json
from harness.serving.logwatch import FAILURE_PATTERNS
from harness.serving.logwatch import FailurePattern
from harness.serving.logwatch import LogWatch
from harness.serving.root_cause import root_cause_of

SMOKE_PROMPT = "Question: Mia has 3 apples and gets 4 more. How many apples does she have?"


@dataclass(frozen=True)
class ServerSpec:
    """What to start and how to know it serves (built by the backend for a cell)."""

    command: Command
    host: str
    port: int
    served_name: str
    ready_timeout_s: float
    ready_marks: tuple[str, ...] = ()
    failures: tuple[FailurePattern, ...] = FAILURE_PATTERNS
    health_path: str = "/health"
    smoke_prompt: str = SMOKE_PROMPT
    smoke_max_tokens: int = 16
    facts: dict[str, Any] = field(default_factory=dict)  # recorded with the serving stage

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"


class ServerFailed(HarnessError):
    """The server did not start, or stopped serving; carries the root-cause lines of its log
    (often far above the tail), the log tail and a hint."""

    def __init__(self, reason: str, hint: str = "", log_path: Path | None = None) -> None:
        self.reason = reason
        self.hint = hint
        self.log_path = log_path
        self.root_cause = root_cause_of(log_path) if log_path else []
        self.log_tail = tail(log_path, 25) if log_path else ""
        text = reason
        if self.root_cause:
            text += "\n--- root cause in the server log ---\n" + "\n".join(self.root_cause)
        if log_path is not None:
            text += f"\n--- last lines of the server log ({log_path}) ---\n{self.log_tail}"
        super().__init__(text)


class Server:
    """A started server; `running()` is the usual way to get one."""

    def __init__(self, spec: ServerSpec, log_path: Path) -> None:
        self.spec = spec
        self.log_path = log_path
        self.watch = LogWatch(log_path, spec.ready_marks, spec.failures)
        self.process: Running | None = None
        self.started_at = 0.0
        self.ready_s: float | None = None
        self.smoke: dict[str, Any] = {}

    @property
    def base_url(self) -> str:
        return self.spec.base_url

    def start(self) -> None:
        node = site()  # a `pytest -n` unit leased on another node: the server starts there
        busy = node.port_in_use(self.spec.port) if node else port_in_use(self.spec.host,
                                                                            self.spec.port)
        if busy:
            raise ServerFailed(
                f"port {self.spec.port} on {self.spec.host} is already in use; the server "
                "was not started",
                "stop the process holding it, or leave serving.port unset so the harness picks "
                "a free port",
            )
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.write_text(f"$ {self.spec.command.shell()}\n", encoding="utf-8")
        self.started_at = time.monotonic()
        self.process = start(self.spec.command, self.log_path)

    def check_alive(self) -> None:
        """Raise ServerFailed if the process exited or logged a fatal error."""
        if self.process is None:
            raise ServerFailed("the server was never started")
        code = self.process.poll()  # first: a remote server's output arrives as it is polled
        failure = self.watch.poll()
        if failure is not None:
            raise ServerFailed(
                f"{failure.pattern.reason}: {failure.line}", failure.pattern.hint, self.log_path
            )
        if code is not None:
            raise ServerFailed(
                f"the server process exited with status {code}"
                + (" (killed by a signal)" if code < 0 else ""),
                "read the log tail for its last error; the harness restarts nothing by itself",
                self.log_path,
            )

    def wait_ready(self, poll_s: float = 0.5, sleep: Callable[[float], None] = time.sleep) -> float:
        """Block until ready; return seconds since start. Fails early on exit/fatal lines."""
        deadline = self.started_at + self.spec.ready_timeout_s
        health = self.base_url + self.spec.health_path
        progress.phase(f"serving {self.spec.served_name}: starting (log: {self.log_path})")
        while True:
            self.check_alive()
            progress.update(
                f"serving {self.spec.served_name}: waiting for {self.spec.health_path}, "
                f"{time.monotonic() - self.started_at:.0f} s (log: {self.log_path})"
            )
            if get_status(health) == 200:
                self.watch.poll()
                if not self.watch.missing_marks:
                    self.ready_s = round(time.monotonic() - self.started_at, 2)
                    return self.ready_s
            if time.monotonic() > deadline:
                missing = self.watch.missing_marks
                what = (
                    f"log never showed {', '.join(repr(m) for m in missing)}"
                    if missing and get_status(health) == 200
                    else f"{health} never answered 200"
                )
                raise ServerFailed(
                    f"the server was not ready after {self.spec.ready_timeout_s:g} s: {what}",
                    "raise serving.ready_timeout_s if warm-up is just slow (Gaudi: a warm-up "
                    "cache via serving.warmup_cache helps); otherwise read the log tail",
                    self.log_path,
                )
            sleep(poll_s)

    def smoke_request(self, timeout_s: float = 120.0) -> dict[str, Any]:
        """One chat completion, as the seeds' curl check does; returns what was measured."""
        payload = {
            "model": self.spec.served_name,
            "messages": [{"role": "user", "content": self.spec.smoke_prompt}],
            "max_tokens": self.spec.smoke_max_tokens,
            "temperature": 0,
        }
        t0 = time.monotonic()
        try:
            reply = post_json(self.base_url + "/v1/chat/completions", payload, timeout_s)
        except OSError as exc:
            self.check_alive()
            raise ServerFailed(
                f"the smoke chat completion failed: {exc}",
                "check --served-model-name and the chat template of the model",
                self.log_path,
            ) from None
        latency_ms = round((time.monotonic() - t0) * 1000.0, 1)
        try:
            text = reply["choices"][0]["message"]["content"] or ""
            tokens = int(reply["usage"]["completion_tokens"])
        except (KeyError, IndexError, TypeError, ValueError):
            raise ServerFailed(
                f"the smoke chat completion returned an unexpected body: {str(reply)[:300]}",
                "the server does not speak the OpenAI chat API as expected",
                self.log_path,
            ) from None
        if tokens < 1:
            raise ServerFailed(
                "the smoke chat completion generated no token", "", self.log_path
            )
        self.smoke = {"reply": text, "completion_tokens": tokens, "latency_ms": latency_ms}
        return self.smoke

    def stop(self, grace_s: float = 10.0) -> None:
        if self.process is not None:
            self.process.stop(grace_s)


@contextlib.contextmanager
def running(spec: ServerSpec, log_path: Path) -> Iterator[Server]:
    """Start, wait until ready, smoke-test; the whole process group is stopped however the
    block ends (success, failure, timeout, Ctrl-C or SIGTERM turned into KeyboardInterrupt)."""
    server = Server(spec, log_path)
    try:
        server.start()
        server.wait_ready()
        server.smoke_request()
        yield server
    finally:
        server.stop()
