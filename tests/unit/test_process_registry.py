"""The process registry's verification: only provably-ours processes of gone harness runs are
ever stopped (pid reuse, a live owner, another boot, a foreign token, a torn record)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from harness import process_registry as reg
from harness.process import Command
from harness.process import ManagedProcess

SLEEPER = (sys.executable, "-c", "import time; time.sleep(600)")


@pytest.fixture
def foreign():
    """A live process group the harness did not start (its own session)."""
    proc = subprocess.Popen(SLEEPER, start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def _gone_owner() -> tuple[int, int]:
    """The pid and start time of a process that has exited (a crashed harness)."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                            stdin=subprocess.PIPE)
    started = reg.start_time(proc.pid)
    assert started is not None
    proc.communicate(b"")
    return proc.pid, started


def _write(directory: Path, owner: dict, *groups: dict, torn: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{owner['pid']}-{owner['start']}.jsonl"
    lines = [json.dumps({"kind": "owner", **owner})] + [
        json.dumps({"kind": "group", **g}) for g in groups]
    path.write_text("\n".join(lines) + "\n" + torn)
    return path


def _owner(boot: str | None = None) -> dict:
    pid, started = _gone_owner()
    return {"pid": pid, "start": started, "boot": boot or reg.boot_id(), "run_id": "r1"}


def test_starting_a_group_records_it_before_anything_else_with_its_token(tmp_path):
    with reg.recording(tmp_path, "run-7") as registry:
        proc = ManagedProcess(Command(SLEEPER), tmp_path / "log")
    try:
        records = [json.loads(line) for line in registry.path.read_text().splitlines()]
        owner, group = records
        assert owner["kind"] == "owner" and owner["pid"] == os.getpid()
        assert owner["run_id"] == "run-7" and owner["start"] == reg.start_time(os.getpid())
        assert group["pid"] == group["pgid"] == proc.pid == os.getpgid(proc.pid)
        assert group["start"] == reg.start_time(proc.pid)
        assert group["argv"] == list(SLEEPER) and group["log"] == str(tmp_path / "log")
        environ = Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0")
        assert f"{reg.ENV_TOKEN}={group['token']}".encode() in environ
    finally:
        proc.stop()


def test_a_reused_pid_is_not_ours_even_in_the_recorded_group(tmp_path, foreign):
    # a record whose leader pid and group are now a foreign process's, with another start time
    started = reg.start_time(foreign.pid)
    assert started is not None
    group = {"pid": foreign.pid, "pgid": foreign.pid, "start": started - 1, "token": "t",
             "argv": list(SLEEPER)}
    _write(tmp_path, _owner(), group)
    (lo,) = reg.find_leftovers(tmp_path)
    assert lo.pids == []
    assert reg.reap_leftovers(tmp_path, grace_s=0.5) == []
    assert reg.alive(foreign.pid)


def test_a_later_process_in_the_group_without_the_token_is_not_ours(tmp_path, foreign):
    started = reg.start_time(foreign.pid)
    group = {"pid": 999_999, "pgid": foreign.pid, "start": started, "token": "ours",
             "argv": ["vllm", "serve"]}
    _write(tmp_path, _owner(), group)
    assert reg.reap_leftovers(tmp_path, grace_s=0.5) == []
    assert reg.alive(foreign.pid)


def test_the_leader_matching_pid_and_start_time_is_stopped(tmp_path, foreign):
    started = reg.start_time(foreign.pid)
    group = {"pid": foreign.pid, "pgid": foreign.pid, "start": started, "token": "t",
             "argv": list(SLEEPER)}
    path = _write(tmp_path, _owner(), group, torn='{"kind": "group", "pid": 12')
    (lo,) = reg.reap_leftovers(tmp_path, grace_s=2.0)
    assert lo.pids == [foreign.pid] and lo.run_id == "r1"
    foreign.wait(timeout=10)
    assert foreign.returncode == -signal.SIGTERM
    assert not path.exists()


def test_records_of_a_live_harness_are_left_alone(tmp_path, foreign):
    started = reg.start_time(foreign.pid)
    owner = {"pid": os.getpid(), "start": reg.start_time(os.getpid()), "boot": reg.boot_id()}
    group = {"pid": foreign.pid, "pgid": foreign.pid, "start": started, "token": "t",
             "argv": list(SLEEPER)}
    path = _write(tmp_path, owner, group)
    assert reg.find_leftovers(tmp_path) == []
    assert reg.reap_leftovers(tmp_path, grace_s=0.5) == []
    assert reg.alive(foreign.pid) and path.exists()


def test_records_of_another_boot_stop_nothing_and_are_dropped(tmp_path, foreign):
    started = reg.start_time(foreign.pid)
    group = {"pid": foreign.pid, "pgid": foreign.pid, "start": started, "token": "t",
             "argv": list(SLEEPER)}
    path = _write(tmp_path, _owner(boot="another-boot"), group)
    assert reg.reap_leftovers(tmp_path, grace_s=0.5) == []
    assert reg.alive(foreign.pid) and not path.exists()


def test_a_file_without_its_owner_line_is_kept(tmp_path):
    tmp_path.joinpath("1-2.jsonl").write_text("")
    assert reg.reap_leftovers(tmp_path) == []
    assert tmp_path.joinpath("1-2.jsonl").exists()


def test_a_child_started_off_the_main_thread_gets_no_death_signal():
    import threading

    got: list[object] = []
    thread = threading.Thread(target=lambda: got.append(reg.child_setup()))
    thread.start()
    thread.join()
    assert got == [None]
    assert callable(reg.child_setup())


def test_a_malformed_record_stops_nothing_and_does_not_crash_the_reaper(tmp_path, foreign):
    started = reg.start_time(foreign.pid)
    _write(tmp_path, _owner(), {"pid": foreign.pid, "pgid": foreign.pid, "start": started})
    _write(tmp_path / "b", {"pid": "x", "start": 1, "boot": reg.boot_id()})
    assert reg.reap_leftovers(tmp_path, grace_s=0.5) == []
    assert reg.reap_leftovers(tmp_path / "b", grace_s=0.5) == []
    assert reg.alive(foreign.pid)


def test_naming_the_run_later_keeps_earlier_groups_in_the_same_file(tmp_path):
    with reg.recording(tmp_path) as registry:
        proc = ManagedProcess(Command(SLEEPER), tmp_path / "log")
        again = reg.activate(tmp_path, "run-9")
    try:
        assert again is registry
        kinds = [json.loads(line)["kind"] for line in registry.path.read_text().splitlines()]
        assert kinds == ["owner", "group", "run"]
    finally:
        proc.stop()
