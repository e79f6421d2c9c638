"""Every process group the harness starts, recorded as it starts, so that the next run can stop
what a crashed run left behind.

SIGKILL of pytest runs no cleanup: the vLLM server's group (API server, EngineCore, workers)
and lm-eval lived on for minutes. Three layers close that hole:

* each started group's leader gets PR_SET_PDEATHSIG (SIGTERM when the harness dies; Linux,
  and only for processes started from the main thread: the signal follows the starting thread);
* each group is appended to a JSON-lines file of the harness process (pid, pgid, start time,
  command, and a random token put in the group's environment) before anything else happens;
* `reap_leftovers()` at the start of a run reads the files of harness processes that are gone
  and stops what is left of their groups. A process is stopped only when it is verifiably
  ours: in the recorded process group, started no earlier than the recorded leader (same
  boot), and carrying the group's token in its environment (the leader also matches by pid and
  start time). Never by name, never a pid that was reused.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import secrets
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

ENV_TOKEN = "HARNESS_PROCESS_GROUP"  # in every started group's environment
ENV_DIR = "HARNESS_PROCESS_DIR"  # where the records go (default: a per-user temp directory)
PR_SET_PDEATHSIG = 1


def default_dir() -> Path:
    """Per user, shared by every run on this host (a crashed run's records must be found by
    the next run whatever its results or cache dir)."""
    configured = os.environ.get(ENV_DIR)
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / f"harness-processes-{os.getuid()}"


# -- /proc facts ------------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name: [state, ppid, pgrp, ...]."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()


def start_time(pid: int) -> int | None:
    """Start time in clock ticks since boot: with the boot id, it identifies a process."""
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def alive(pid: int, started: int | None = None) -> bool:
    """The process exists, is not a zombie, and (if given) started at `started`."""
    fields = _stat(pid)
    if not fields or fields[0] in ("Z", "X"):
        return False
    return started is None or int(fields[19]) == started


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [p.decode("utf-8", "replace") for p in raw.split(b"\0") if p]


def _has_token(pid: int, token: str) -> bool:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"{ENV_TOKEN}={token}".encode() in env.split(b"\0")


def _groups() -> dict[int, list[int]]:
    """Live (non-zombie) processes by process group: one pass over /proc."""
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields and fields[0] not in ("Z", "X"):
                out.setdefault(int(fields[2]), []).append(int(entry))
    return out


# -- the child side: die with the harness -----------------------------------------------------

try:
    _prctl: Any = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: the reaper alone covers it
    _prctl = None


def child_setup() -> Callable[[], None] | None:
    """A preexec_fn giving the child PR_SET_PDEATHSIG=SIGTERM, or None where that would be
    wrong (not Linux; not the main thread, whose exit would signal a healthy child)."""
    if _prctl is None or threading.current_thread() is not threading.main_thread():
        return None
    parent = os.getpid()

    def setup() -> None:  # runs in the child between fork and exec: no imports, no locks
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the harness died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return setup


# -- the harness side: record -----------------------------------------------------------------


class Registry:
    """The records of this harness process: one JSON-lines file, appended as groups start."""

    def __init__(self, directory: Path, run_id: str | None = None) -> None:
        self.directory = directory
        self.run_id = run_id
        self.pid = os.getpid()
        self.started = start_time(self.pid) or 0
        self.path = directory / f"{self.pid}-{self.started}.jsonl"
        self._opened = False
        self._lock = threading.Lock()

    def new_token(self) -> str:
        return f"{self.pid}-{secrets.token_hex(8)}"

    def _append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, sort_keys=True) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)  # one write per line: a crash leaves whole lines
        finally:
            os.close(fd)

    def _open(self) -> None:
        if self._opened:
            return
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._append({
            "kind": "owner", "pid": self.pid, "start": self.started, "boot": boot_id(),
            "run_id": self.run_id, "argv": _cmdline(self.pid), "cwd": os.getcwd(),
            "time": time.time(),
        })
        self._opened = True

    def record(self, pid: int, pgid: int, argv: Sequence[str], token: str, log: str,
               node: str | None = None) -> None:
        """Called right after the group's leader is forked, before the harness waits on it.
        `node`: a group started on another Ray node (its pid is that host's; a pid of this
        host is stopped only when it carries the token, so a pid of another host never is)."""
        with self._lock:
            self._open()
            self._append({
                "kind": "group", "pid": pid, "pgid": pgid, "start": start_time(pid),
                "argv": list(argv), "token": token, "log": log, "time": time.time(),
                **({"node": node} if node else {}),
            })

    def name_run(self, run_id: str | None) -> None:
        with self._lock:
            self.run_id = run_id
            if self._opened:
                self._append({"kind": "run", "run_id": run_id, "time": time.time()})

    def close(self) -> None:
        """At a clean exit (every group stopped): nothing is left to reap."""
        with contextlib.suppress(OSError):
            self.path.unlink()


_current: Registry | None = None


def current() -> Registry:
    """This process's registry (the default directory unless `activate` chose one)."""
    global _current
    if _current is None or _current.pid != os.getpid():  # a forked child starts its own
        _current = Registry(default_dir())
    return _current


def activate(directory: Path | None = None, run_id: str | None = None) -> Registry:
    """Name the run the records belong to (what the reaper reports) before groups start."""
    global _current
    directory = directory or default_dir()
    if _current is not None and _current.pid == os.getpid() and _current.directory == directory:
        _current.name_run(run_id)  # groups already recorded stay in the same file
    else:
        _current = Registry(directory, run_id)
    return _current


@atexit.register
def _close_at_exit() -> None:
    if _current is not None and _current.pid == os.getpid():
        _current.close()


# -- the next run: find and stop leftovers ----------------------------------------------------


@dataclass
class Leftover:
    """A recorded group of a harness process that is gone, with its verified survivors."""

    record_file: Path
    owner_pid: int
    run_id: str | None
    pgid: int
    argv: list[str]
    pids: list[int] = field(default_factory=list)
    starts: dict[int, int] = field(default_factory=dict)

    def describe(self) -> str:
        run = f"run {self.run_id}" if self.run_id else f"harness pid {self.owner_pid}"
        cmd = " ".join(self.argv)[:120]
        return (
            f"stopped {len(self.pids)} leftover process(es) of crashed {run}: group "
            f"{self.pgid} (pids {', '.join(map(str, self.pids))}) `{cmd}`"
        )


def _read(path: Path) -> list[dict[str, Any]]:
    records = []
    with contextlib.suppress(OSError):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            with contextlib.suppress(ValueError):  # a torn last line
                records.append(json.loads(line))
    return [r for r in records if isinstance(r, dict)]


def _verified(group: dict[str, Any], members: dict[int, list[int]]) -> dict[int, int]:
    """Survivors of a recorded group that are provably its members: {pid: start time}."""
    leader, pgid, token = int(group["pid"]), int(group["pgid"]), str(group["token"])
    started = group.get("start")
    if started is None:
        return {}
    out = {}
    for pid in members.get(pgid, []):
        begun = start_time(pid)
        if begun is None or begun < int(started):
            continue  # older than the recorded leader: not of this group
        if (pid == leader and begun == int(started)) or _has_token(pid, token):
            out[pid] = begun
    return out


def find_leftovers(directory: Path | None = None) -> list[Leftover]:
    """Groups recorded by harness processes that are gone, with their verified survivors.
    Files of a live harness process are left alone; of another boot, nothing survives."""
    directory = directory or default_dir()
    boot = boot_id()
    out: list[Leftover] = []
    members: dict[int, list[int]] | None = None
    for path in sorted(directory.glob("*.jsonl")) if directory.is_dir() else []:
        records = _read(path)
        owner = next((r for r in records if r.get("kind") == "owner"), None)
        try:
            if owner is None or owner.get("boot") != boot:
                continue
            if alive(int(owner["pid"]), owner.get("start")):
                continue  # a run in progress
            if members is None:
                members = _groups()
            owner_pid = int(owner["pid"])
            named = [r for r in records if r.get("kind") == "run"]
            run_id = named[-1].get("run_id") if named else owner.get("run_id")
        except (KeyError, TypeError, ValueError):  # a malformed owner: leave the file alone
            continue
        for group in (r for r in records if r.get("kind") == "group"):
            try:
                pids = _verified(group, members)
                pgid, argv = int(group["pgid"]), [str(a) for a in group.get("argv", [])]
            except (KeyError, TypeError, ValueError):  # a malformed record stops nothing
                continue
            out.append(Leftover(path, owner_pid, run_id, pgid, argv,
                                sorted(pids), pids))
    return out


def _signal(pids: dict[int, int], sig: int) -> None:
    for pid, started in pids.items():
        if alive(pid, started):  # checked again just before: a pid may have been reused
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


def _wait_gone(pids: dict[int, int], grace_s: float) -> dict[int, int]:
    deadline = time.monotonic() + grace_s
    left = dict(pids)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = {p: s for p, s in left.items() if alive(p, s)}
    return left


def reap_leftovers(directory: Path | None = None, grace_s: float = 5.0) -> list[Leftover]:
    """Stop the verified survivors of crashed runs (SIGTERM, then SIGKILL after `grace_s`),
    remove the records of runs with nothing left, and return what was stopped (for the run to
    print). Call once at session start, before anything is started."""
    directory = directory or default_dir()
    leftovers = find_leftovers(directory)
    survivors = {pid: s for lo in leftovers for pid, s in lo.starts.items()}
    _signal(survivors, signal.SIGTERM)
    stubborn = _wait_gone(survivors, grace_s)
    _signal(stubborn, signal.SIGKILL)
    _wait_gone(stubborn, grace_s)
    for path in {lo.record_file for lo in leftovers}:
        with contextlib.suppress(OSError):
            path.unlink()
    _forget_empty(directory)
    return [lo for lo in leftovers if lo.pids]


def _forget_empty(directory: Path) -> None:
    """Files of gone owners that recorded no group, or of another boot, are dropped too (a file
    without its owner line is left: it may be one being created)."""
    boot = boot_id()
    for path in directory.glob("*.jsonl") if directory.is_dir() else []:
        records = _read(path)
        owner = next((r for r in records if r.get("kind") == "owner"), None)
        if owner is None or not isinstance(owner.get("pid"), int):
            continue
        other_boot = owner.get("boot") != boot
        gone = other_boot or not alive(owner["pid"], owner.get("start"))
        if other_boot or (gone and not any(r.get("kind") == "group" for r in records)):
            with contextlib.suppress(OSError):
                path.unlink()


@contextlib.contextmanager
def recording(directory: Path, run_id: str | None = None) -> Iterator[Registry]:
    """Tests and tools: record into `directory` for the block, then restore the previous."""
    global _current
    before = _current
    registry = activate(directory, run_id)
    try:
        yield registry
    finally:
        _current = before
