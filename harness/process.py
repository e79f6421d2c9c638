"""Subprocesses in their own process group, stopped by group id on every exit path."""

from __future__ import annotations

import atexit
import contextlib
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any
from typing import Protocol

from harness import process_registry
from harness.errors import HarnessError


class Running(Protocol):
    """A started process group: here (ManagedProcess) or on a unit's leased node elsewhere."""

    command: Command
    log_path: Path

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout_s: float) -> int: ...

    def stop(self, grace_s: float = 5.0) -> None: ...


class Site(Protocol):
    """Where a work unit's processes run when its lease is a Ray node other than the harness's
    own (harness.workplan.node_site): commands start there, servers bind its address."""

    @property
    def label(self) -> str: ...  # "ip/node-id", as the report names a node

    @property
    def address(self) -> str: ...  # the node's address: servers bind it, clients connect to it

    def start(self, command: Command, log_path: Path) -> Running: ...

    def free_port(self) -> int: ...

    def port_in_use(self, port: int) -> bool: ...

    def facts(self, spec: dict[str, Any]) -> dict[str, Any]: ...


_cores: frozenset[int] = frozenset()  # the cores a leased work unit's processes run on
_placement: dict[str, str] = {}  # and the env that makes them use its devices
_site: Site | None = None  # the leased node, when it is not the harness's own


@contextlib.contextmanager
def placed(
    cores: Iterable[int] = (), env: Mapping[str, str] | None = None, site: Site | None = None
) -> Iterator[None]:
    """Every process started in the block runs on a work unit's lease (`pytest -n`): on `cores`
    (cpu; the harness itself is not confined, so its checks still see the host; cores this
    process may not use are left out, none left: no confinement) and with `env` over its own
    (HABANA_VISIBLE_MODULES, or the cpu cores as VLLM_CPU_OMP_THREADS_BIND).

    With `site` (a leased node elsewhere) `start()` starts there, and the site applies `env`
    and the cores; what still starts here (clients) is not confined."""
    global _cores, _placement, _site
    before = _cores, _placement, _site
    _cores = frozenset(cores) & frozenset(os.sched_getaffinity(0)) if site is None else frozenset()
    _placement = dict(env or {})
    _site = site
    try:
        yield
    finally:
        _cores, _placement, _site = before


def placement_env() -> dict[str, str]:
    """The env of the lease processes started now get ({} outside a work unit)."""
    return dict(_placement)


def site() -> Site | None:
    """The leased node a unit's commands start on, when it is not this host's (else None)."""
    return _site


def start(command: Command, log_path: Path) -> Running:
    """Start a unit's command where its lease is: on the leased node of another host through
    the site, else here. Clients of a server start here (ManagedProcess) and connect to it."""
    if _site is not None:
        return _site.start(command, log_path)
    return ManagedProcess(command, log_path)


def _child_setup() -> Callable[[], None] | None:
    """The registry's preexec_fn, plus the leased cores as the child's affinity."""
    base, cores = process_registry.child_setup(), _cores
    if not cores:
        return base

    def setup() -> None:  # between fork and exec: a syscall, no imports, no locks
        os.sched_setaffinity(0, cores)
        if base is not None:
            base()

    return setup


@dataclass(frozen=True)
class Command:
    """A command line plus the environment the harness sets for it (on top of the caller's)."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    cwd: str | None = None
    node: int | None = None  # multi-node: which node runs it (0 = head)

    def shell(self) -> str:
        """One line a person can paste: `VAR=value ... cmd args`."""
        assignments = " ".join(f"{k}={shlex.quote(str(v))}" for k, v in sorted(self.env.items()))
        line = shlex.join(self.argv)
        return f"{assignments} {line}" if assignments else line


class CommandFailed(HarnessError):
    """A command exited non-zero or timed out; carries the command and the log tail."""

    def __init__(self, command: Command, reason: str, log_tail: str = "") -> None:
        self.command = command
        self.reason = reason
        self.log_tail = log_tail
        text = f"`{shlex.join(command.argv)}` {reason}"
        if log_tail:
            text += "\n--- last lines of its output ---\n" + log_tail
        super().__init__(text)


_live_groups: set[int] = set()


def kill_group(pgid: int, grace_s: float = 5.0, reap: Callable[[], object] | None = None) -> None:
    """SIGTERM the group, wait up to `grace_s`, then SIGKILL what is left.

    `reap` (our child's poll) is called while waiting: a leader that exited stays a zombie, and
    so a member of the group, until its parent reaps it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if reap is not None:
            reap()
        if not group_alive(pgid):
            break
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    _live_groups.discard(pgid)


def group_alive(pgid: int) -> bool:
    """Whether any process of group `pgid` still exists (a zombie leader counts)."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def kill_all_groups() -> None:
    """Stop every group this process started and has not stopped yet (session end, Ctrl-C)."""
    for pgid in list(_live_groups):
        kill_group(pgid, grace_s=3.0)


atexit.register(kill_all_groups)


def tail(path: Path, lines: int = 30) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64_000))
            data = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


class ManagedProcess:
    """A started command writing to a log file; `stop()` ends its whole process group."""

    def __init__(self, command: Command, log_path: Path) -> None:
        self.command = command
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        registry = process_registry.current()
        token = registry.new_token()  # marks the group's processes as ours for the reaper
        env = {
            **os.environ,
            **{k: str(v) for k, v in command.env.items()},
            **({} if _site else _placement),  # the unit's devices win over the command's
            process_registry.ENV_TOKEN: token,
        }
        self._log = log_path.open("ab")
        try:
            self.popen = subprocess.Popen(
                list(command.argv),
                env=env,
                cwd=command.cwd,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_child_setup(),  # dies with the harness (Linux), on the lease's cores
            )
        except OSError as exc:
            self._log.close()
            raise CommandFailed(command, f"could not start: {exc.strerror}") from None
        self.pgid = self.popen.pid
        _live_groups.add(self.pgid)
        with contextlib.suppress(OSError):  # a full /tmp must not stop the run
            registry.record(self.pid, self.pgid, command.argv, token, str(log_path))

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        return self.popen.poll()

    def wait(self, timeout_s: float) -> int:
        """Wait for exit; on timeout stop the group and raise CommandFailed with the log tail."""
        try:
            return self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.stop()
            raise CommandFailed(
                self.command, f"timed out after {timeout_s:g} s", tail(self.log_path)
            ) from None
        except BaseException:
            self.stop()
            raise

    def stop(self, grace_s: float = 5.0) -> None:
        kill_group(self.pgid, grace_s, reap=self.popen.poll)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=grace_s)
        self._log.close()

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class Waited:
    """How `wait_for` ended: all exited (both None), one failed, or the deadline passed."""

    failed: Running | None = None  # the first (in order) that exited non-zero
    timed_out: Running | None = None  # the first still running at the deadline


def wait_for(
    procs: Sequence[Running],
    timeout_s: float,
    poll_s: float = 0.1,
    check: Callable[[], None] | None = None,
) -> Waited:
    """Poll until every process exited, one exited non-zero, or `timeout_s` passed.

    `check` runs on every poll while some still run (e.g. "is the server still alive?") and
    may raise. Stopping the processes is the caller's (`stop()` / `started`), on every path."""
    deadline = time.monotonic() + timeout_s
    while True:
        codes = [p.poll() for p in procs]
        failed = next((p for p, c in zip(procs, codes, strict=True) if c not in (None, 0)), None)
        if failed is not None:
            return Waited(failed=failed)
        running = [p for p, c in zip(procs, codes, strict=True) if c is None]
        if not running:
            return Waited()
        if check is not None:
            check()
        if time.monotonic() > deadline:
            return Waited(timed_out=running[0])
        time.sleep(poll_s)


def run(command: Command, log_path: Path, timeout_s: float) -> str:
    """Run to completion (on the unit's site, see `start`); return its output. Non-zero exit or
    timeout raises CommandFailed."""
    proc = start(command, log_path)
    try:
        code = proc.wait(timeout_s)
    finally:
        proc.stop()
    if code != 0:
        raise CommandFailed(command, f"exited with status {code}", tail(log_path))
    return log_path.read_text(encoding="utf-8", errors="replace")


@contextlib.contextmanager
def started(command: Command, log_path: Path) -> Iterator[Running]:
    """Context manager form of `start`: the group is stopped however the block ends."""
    proc = start(command, log_path)
    try:
        yield proc
    finally:
        proc.stop()
