"""Run a client (lm-eval, the serving benchmark) against a server while watching the server.

If the server dies mid-run the client would otherwise retry until its own timeout (lm-eval
retries for minutes); here the client is stopped at once and the failure names the server's
last log lines instead of the client's connection errors.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol

from harness import progress
from harness.process import Command
from harness.process import CommandFailed
from harness.process import ManagedProcess
from harness.process import tail
from harness.process import wait_for
from harness.progress import client_text


class Watched(Protocol):
    def check_alive(self) -> None: ...


def run_client(
    command: Command,
    log_path: Path,
    timeout_s: float,
    server: Watched,
    poll_s: float = 0.5,
    label: str = "client",
    unit: str = "requests",
) -> None:
    """Run `command` to completion; raise CommandFailed (non-zero exit, timeout) or the
    server's ServerFailed (it stopped serving). The client's group is stopped either way.
    While it runs the terminal shows `<label>: 37/100 <unit>` from its progress bar."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text(f"$ {command.shell()}\n", encoding="utf-8")
    proc = ManagedProcess(command, log_path)
    started = time.monotonic()
    progress.phase(f"{label}: started (log: {log_path})")

    def check() -> None:
        server.check_alive()
        progress.update(client_text(label, log_path, unit, time.monotonic() - started))

    try:
        waited = wait_for([proc], timeout_s, poll_s, check=check)
        if waited.timed_out is not None:
            raise CommandFailed(command, f"timed out after {timeout_s:g} s", tail(log_path))
        code = proc.poll()
    finally:
        proc.stop(grace_s=5.0)
    if code != 0:
        server.check_alive()  # a client failing because the server died: report the server
        raise CommandFailed(command, f"exited with status {code}", tail(log_path))
