"""Processes run in their own group and are stopped by group on every exit path."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from harness.process import Command
from harness.process import CommandFailed
from harness.process import ManagedProcess
from harness.process import placed
from harness.process import run
from harness.process import started

# A parent that starts a child in the same group, prints the child's pid, then sleeps.
PARENT = (
    "import subprocess, sys, time; "
    "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
    "print(c.pid, flush=True); time.sleep(60)"
)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purpose
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def wait_for_line(path, timeout=20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if text.strip():
            return text.strip().splitlines()[0]
        time.sleep(0.05)
    raise AssertionError(f"no output in {path}")


def test_shell_line_shows_env_then_quoted_argv():
    cmd = Command(("vllm", "serve", "a b"), {"QUANT_CONFIG": "/x/q.json", "A": "1"})
    assert cmd.shell() == "A=1 QUANT_CONFIG=/x/q.json vllm serve 'a b'"


def test_run_returns_output_and_passes_env(tmp_path):
    out = run(
        Command((sys.executable, "-c", "import os; print(os.environ['HX'])"), {"HX": "42"}),
        tmp_path / "log",
        30,
    )
    assert out.strip() == "42"


def test_non_zero_exit_raises_with_the_log_tail(tmp_path):
    cmd = Command((sys.executable, "-c", "print('boom'); raise SystemExit(3)"))
    with pytest.raises(CommandFailed, match=r"exited with status 3[\s\S]*boom"):
        run(cmd, tmp_path / "log", 30)


def test_timeout_stops_the_whole_group_children_included(tmp_path):
    log = tmp_path / "log"
    proc = ManagedProcess(Command((sys.executable, "-c", PARENT)), log)
    child = int(wait_for_line(log))
    with pytest.raises(CommandFailed, match="timed out after 0.5 s"):
        proc.wait(0.5)
    time.sleep(0.2)
    assert not alive(proc.pid) and not alive(child)


def test_leaving_the_context_by_exception_stops_the_group(tmp_path):
    log = tmp_path / "log"
    with (
        pytest.raises(KeyboardInterrupt),
        started(Command((sys.executable, "-c", PARENT)), log) as proc,
    ):
        child = int(wait_for_line(log))
        raise KeyboardInterrupt
    time.sleep(0.2)
    assert not alive(proc.pid) and not alive(child)


def test_a_missing_program_is_a_clear_error(tmp_path):
    with pytest.raises(CommandFailed, match="could not start"):
        run(Command(("/nonexistent/vllm", "serve")), tmp_path / "log", 5)


def test_processes_started_while_confined_run_on_the_leased_cores(tmp_path: Path) -> None:
    """A cpu work unit's lease (pytest -n): what it starts runs on its cores; the harness
    itself and what starts after the block are not confined."""
    code = "import os; print(sorted(os.sched_getaffinity(0)), os.environ.get('LEASED'))"
    probe = Command((sys.executable, "-c", code), env={"LEASED": "command's own"})
    host = sorted(os.sched_getaffinity(0))
    with placed([host[-1]], {"LEASED": "2,3"}):
        inside = run(probe, tmp_path / "inside.log", 60).strip()
        assert sorted(os.sched_getaffinity(0)) == host  # the harness is not confined
        assert "LEASED" not in os.environ
    after = run(probe, tmp_path / "after.log", 60).strip()
    assert inside == f"{[host[-1]]} 2,3"  # the lease's env wins over the command's
    assert after == f"{host} command's own"
    with placed([10_000]):  # no usable core: nothing is confined
        assert run(probe, tmp_path / "none.log", 60).strip() == f"{host} command's own"
