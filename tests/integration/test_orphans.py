"""No orphans after SIGKILL of the harness: a real process tree, a real SIGKILL of its parent
python process, then the next run's reaper (issue 16, "nothing orphaned").

The tree is what a vLLM server is: a group leader started by harness.process (own session,
recorded, PR_SET_PDEATHSIG) with a child of its own (the EngineCore), which the kernel does not
signal when the harness dies. A decoy with the very same command line, not started by the
harness, must survive: processes are verified, never matched by name.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import process_registry
from harness.process_registry import alive
from harness.process_registry import reap_leftovers

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SLEEPER = "import time; time.sleep(600)"

LEADER = """
import os, signal, subprocess, sys
if sys.argv[1] == "ignore-sigterm":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", "engine-core"])
with open(sys.argv[2] + ".tmp", "w") as fh:
    fh.write(f"{os.getpid()} {child.pid}")
os.replace(sys.argv[2] + ".tmp", sys.argv[2])
while True:
    signal.pause()
"""

HARNESS = """
import sys, time
from pathlib import Path
from harness import process_registry
from harness.process import Command, ManagedProcess
process_registry.activate(Path(sys.argv[1]), run_id="crashed-run")
mode, pids = sys.argv[2], sys.argv[3]
ManagedProcess(Command((sys.executable, "-c", sys.argv[4], mode, pids)), Path(pids + ".log"))
time.sleep(600)
"""


# the same tree started from a test inside a real pytest process (the SIGKILL of pytest)
PYTEST_FILE = """
import os, sys, time
from pathlib import Path
from harness import process_registry
from harness.process import Command, ManagedProcess

def test_serving_holds_a_server():
    process_registry.activate(Path(os.environ["REG"]), run_id="crashed-run")
    argv = (sys.executable, "-c", os.environ["LEADER"], os.environ["MODE"], os.environ["PIDS"])
    ManagedProcess(Command(argv), Path(os.environ["PIDS"] + ".log"))
    time.sleep(600)
"""


def _start_parent(kind: str, tmp_path: Path, registry: Path, mode: str, pids: Path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if kind == "python":
        argv = [sys.executable, "-c", HARNESS, str(registry), mode, str(pids), LEADER]
    else:
        test = tmp_path / "test_hold.py"
        test.write_text(PYTEST_FILE)
        env.update(REG=str(registry), LEADER=LEADER, MODE=mode, PIDS=str(pids))
        argv = [sys.executable, "-m", "pytest", str(test), "-q", "-p", "no:cacheprovider",
                "--rootdir", str(tmp_path)]
    return subprocess.Popen(argv, env=env, cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait(predicate, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.fixture
def decoy():
    """A process with the grandchild's exact command line that the harness did not start."""
    proc = subprocess.Popen([sys.executable, "-c", SLEEPER, "engine-core"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


@pytest.mark.parametrize(("parent", "mode"), [("python", "default"), ("python", "ignore-sigterm"),
                                              ("pytest", "default")])
def test_sigkill_of_the_harness_leaves_nothing_after_the_next_runs_reaper(
    tmp_path, decoy, parent, mode
):
    registry = tmp_path / "registry"
    pids_file = tmp_path / "pids"
    harness = _start_parent(parent, tmp_path, registry, mode, pids_file)
    try:
        assert _wait(pids_file.exists, 120), "the harness did not start its process tree"
        leader, engine = map(int, pids_file.read_text().split())
        assert os.getpgid(engine) == leader  # one group, as vLLM's server and engine
        (record,) = registry.glob("*.jsonl")
        assert f'"pgid": {leader}' in record.read_text()

        os.kill(harness.pid, signal.SIGKILL)  # no atexit, no finally: a hard crash
        harness.wait()

        if mode == "default":  # PR_SET_PDEATHSIG: the leader got SIGTERM with its parent
            assert _wait(lambda: not alive(leader)), "the leader outlived the harness"
        else:
            assert alive(leader)
        assert alive(engine)  # the kernel does not signal grandchildren: the reaper must

        stopped = reap_leftovers(registry, grace_s=2.0)

        (lo,) = stopped
        assert lo.pgid == leader and lo.run_id == "crashed-run"
        assert lo.pids == ([engine] if mode == "default" else sorted([leader, engine]))
        assert lo.describe().startswith("stopped ")
        assert "of crashed run crashed-run: group" in lo.describe()
        assert not alive(engine) and not alive(leader)
        assert alive(decoy.pid), "a process was matched by name"
        assert list(registry.glob("*.jsonl")) == []  # the crashed run's record is done with
        assert reap_leftovers(registry) == []
    finally:
        harness.kill()
        harness.wait()
        for pid in (int(p) for p in (pids_file.read_text().split() if pids_file.exists() else [])):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_live_runs_processes_are_never_reaped(tmp_path):
    from harness.process import Command
    from harness.process import ManagedProcess

    with process_registry.recording(tmp_path / "registry", "live-run"):
        proc = ManagedProcess(Command((sys.executable, "-c", SLEEPER)), tmp_path / "log")
    try:
        assert reap_leftovers(tmp_path / "registry", grace_s=0.5) == []
        assert alive(proc.pid)
        assert len(list((tmp_path / "registry").glob("*.jsonl"))) == 1
    finally:
        proc.stop()


def test_harness_leftovers_lists_then_stops_a_crashed_runs_group(tmp_path):
    registry = tmp_path / "registry"
    pids_file = tmp_path / "pids"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    harness = subprocess.Popen(
        [sys.executable, "-c", HARNESS, str(registry), "ignore-sigterm", str(pids_file), LEADER],
        env=env, start_new_session=True,
    )
    try:
        assert _wait(pids_file.exists)
        leader, engine = map(int, pids_file.read_text().split())
        os.kill(harness.pid, signal.SIGKILL)
        harness.wait()
        cli = [sys.executable, "-m", "harness.cli", "leftovers", "--dir", str(registry)]
        listed = subprocess.run(cli, capture_output=True, text=True, env=env, timeout=120)
        assert listed.returncode == 0
        assert f"group {leader} (pids {min(leader, engine)}, {max(leader, engine)}) of crashed " \
               "run crashed-run" in listed.stdout
        assert alive(leader) and alive(engine)
        stopped = subprocess.run([*cli, "--stop"], capture_output=True, text=True, env=env,
                                 timeout=120)
        assert stopped.stdout.splitlines()[-1] == "1 leftover group(s) stopped"
        assert not alive(leader) and not alive(engine)
    finally:
        harness.kill()
        harness.wait()
        for pid in (int(p) for p in (pids_file.read_text().split() if pids_file.exists() else [])):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
