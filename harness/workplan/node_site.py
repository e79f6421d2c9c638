"""A leased node on another Ray node than the harness's: a unit's commands start there.

Under `pytest -n` on a cluster a unit may hold cards on a node of another host. Its server,
calibration, prechecks and node-phase commands then start on that node (`NodeSite.start`)
through a `NodeKeeper` actor pinned there (Ray's node affinity, no resources of its own, so the
lease's bundle stays whole); clients (lm-eval, the benchmark) start here and connect to the
node's address, where the server binds.

On the node the actor starts a small keeper (stdlib Python) in a new process group; the keeper
starts the command in that group, with the lease's env (HABANA_VISIBLE_MODULES, or the leased
cores as VLLM_CPU_OMP_THREADS_BIND plus CPU affinity) over the node's own environment, and
writes its output to a file on the node. Here, `RemoteProcess` mirrors that file into the
local log as it polls, so log watches, root causes and reports read it as they read a local
one. Stopping ends the whole group (SIGTERM, grace, SIGKILL). When the harness dies without
stopping it, Ray ends the actor with its owner, and the keeper, seeing its parent gone, ends
its group: nothing outlives the run on the node either.

Paths do not travel: the run directory and the model paths must be on storage every node mounts
at the same path (as vLLM's multi-node serving already requires). A command naming an absolute
path that exists here but not on the node is refused, naming the node and the paths.
ray is imported only inside functions; the actor and the tasks are stdlib only (shipped by value).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

from harness import process_registry
from harness.cluster import facts_on
from harness.cluster import node_label
from harness.cluster import on_node
from harness.process import Command
from harness.process import CommandFailed
from harness.process import tail
from harness.process_registry import ENV_TOKEN
from harness.workplan.leases import LeasedNode

CHUNK = 1_000_000  # bytes of output brought over per poll
CALL_TIMEOUT_S = 60.0
SHARED_STORAGE = (
    "the run directory and the model paths must be on storage every node mounts at the same "
    "path (as multi-node vLLM requires); mount it there, or plan onto this host's nodes only"
)

KEEPER = r"""
import json, os, select, signal, subprocess, sys, time
spec = json.loads(sys.argv[1])
lifeline = int(spec["lifeline"])
if os.fork():  # Ray SIGKILLs a dead actor's children: the keeper is a grandchild, to outlive it
    os._exit(0)
cores = set(spec["cores"]) & os.sched_getaffinity(0)
def confine():
    if cores:
        os.sched_setaffinity(0, cores)
out = open(spec["log"], "ab", buffering=0)
child = subprocess.Popen(spec["argv"], env={**os.environ, **spec["env"]}, cwd=spec["cwd"],
                         stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                         preexec_fn=confine)
def publish(name, value):
    with open(spec[name] + ".tmp", "w") as fh:
        fh.write(str(value))
    os.replace(spec[name] + ".tmp", spec[name])
publish("pidfile", child.pid)
asked = []
signal.signal(signal.SIGTERM, lambda *_: asked.append(1))
rc = None
while not asked:
    if select.select([lifeline], [], [], 0.2)[0] and not os.read(lifeline, 1):
        break  # the actor is gone (its end of the pipe closed): so is the harness's hold
    if rc is None:
        rc = child.poll()
        if rc is not None:
            publish("rcfile", rc)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
os.killpg(0, signal.SIGTERM)
deadline = time.monotonic() + float(spec["grace"])
while child.poll() is None and time.monotonic() < deadline:
    time.sleep(0.05)
os.killpg(0, signal.SIGKILL)
"""


def _keeper_class() -> type:
    """NodeKeeper, defined in a closure so Ray ships it by value (stdlib only inside)."""

    class NodeKeeper:
        """Starts one command on its node under a keeper; reports output and exit; stops it."""

        def __init__(self, keeper_source: str) -> None:
            import tempfile

            self.source = keeper_source
            self.dir = tempfile.mkdtemp(prefix="harness-node-")
            self.pgid = 0  # the keeper's process group: the command and all it starts
            self.lifeline = -1

        def start(
            self, argv: list[str], env: dict[str, str], cwd: str | None, cores: list[int],
            paths: list[str], grace_s: float, harness_cwd: str,
        ) -> dict[str, Any]:
            import json
            import os
            import socket
            import subprocess
            import sys
            import time

            host = socket.gethostname()
            missing = [p for p in paths if not os.path.exists(p)]
            if missing:
                return {"error": f"not found on {host}: {', '.join(missing)}", "missing": missing}
            pidfile = os.path.join(self.dir, "pid")
            spec: dict[str, Any] = {
                "argv": argv, "env": env, "cores": cores, "grace": grace_s,
                # no cwd of its own: the harness's, as here, when the node sees it
                "cwd": cwd or (harness_cwd if os.path.isdir(harness_cwd) else None),
                "log": os.path.join(self.dir, "out.log"), "pidfile": pidfile,
                "rcfile": os.path.join(self.dir, "rc"),
            }
            read_end, self.lifeline = os.pipe()  # closes when this actor ends, however
            spec["lifeline"] = read_end
            with open(os.path.join(self.dir, "keeper.log"), "ab") as err:
                first = subprocess.Popen(
                    [sys.executable, "-c", self.source, json.dumps(spec)],
                    stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT,
                    start_new_session=True, pass_fds=(read_end,),
                )
            os.close(read_end)
            self.pgid = first.pid  # the keeper forked from it and leads its group
            first.wait()
            deadline = time.monotonic() + 30.0
            while not os.path.exists(pidfile):  # written whole (os.replace)
                if time.monotonic() > deadline:
                    with open(os.path.join(self.dir, "keeper.log"), "rb") as fh:
                        why = fh.read().decode("utf-8", "replace")[-2000:]
                    return {"error": f"could not start on {host}: {why.strip()}", "missing": []}
                time.sleep(0.02)
            with open(pidfile) as fh:
                pid = int(fh.read())
            return {"pid": pid, "pgid": self.pgid, "host": host}

        def follow(self, offset: int, cap: int) -> dict[str, Any]:
            """Output from `offset` (at most `cap` bytes) and, once all is read, the exit."""
            import os

            data = b""
            with open(os.path.join(self.dir, "out.log"), "rb") as fh:
                fh.seek(offset)
                data = fh.read(cap)
            rc = None
            if len(data) < cap:
                try:
                    with open(os.path.join(self.dir, "rc")) as fh:
                        rc = int(fh.read())
                except (OSError, ValueError):
                    rc = None
            return {"data": data, "rc": rc}

        def stop(self, grace_s: float) -> bool:
            """End the group (the keeper's SIGTERM path, then SIGKILL); True when it is gone."""
            import contextlib
            import os
            import signal
            import time

            def members() -> bool:  # live (not zombie) processes of the group
                for entry in os.listdir("/proc"):
                    if entry.isdigit():
                        try:
                            with open(f"/proc/{entry}/stat") as fh:
                                fields = fh.read().rsplit(") ", 1)[1].split()
                        except (OSError, IndexError):
                            continue
                        if int(fields[2]) == self.pgid and fields[0] != "Z":
                            return True
                return False

            if not self.pgid:
                return True
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pgid, signal.SIGTERM)
            deadline = time.monotonic() + grace_s + 2.0
            while time.monotonic() < deadline:
                if not members():
                    return True
                time.sleep(0.05)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pgid, signal.SIGKILL)
            return False

        def close(self) -> None:
            import shutil

            shutil.rmtree(self.dir, ignore_errors=True)

    return NodeKeeper


def _port_probe() -> Callable[[str, int], int]:
    """In a closure, so Ray ships it by value (stdlib only inside)."""

    def probe(host: str, port: int) -> int:
        """On the node: bind host:port (0: any free one); the port, or -1 when it is taken."""
        import socket

        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                return -1
            return int(sock.getsockname()[1])

    return probe


def paths_named(command: Command) -> list[str]:
    """Absolute paths the command names (argv, `--flag=/path`, env values, cwd) that exist
    here: the node must see them at the same path."""
    words = [*command.argv, *command.env.values(), *([command.cwd] if command.cwd else [])]
    found = []
    for word in words:
        value = word.split("=", 1)[1] if word.startswith("-") and "=" in word else word
        if value.startswith("/") and "\n" not in value and Path(value).exists():
            found.append(value)
    return list(dict.fromkeys(found))


@dataclass(frozen=True)
class NodeSite:
    """A unit's leased node elsewhere: commands start there with the lease's env and cores."""

    node: LeasedNode
    env: dict[str, str] = field(default_factory=dict)
    cores: tuple[int, ...] = ()  # cpu: the leased cores, applied as affinity on the node

    @property
    def label(self) -> str:
        return node_label(self.node.ip, self.node.node_id)

    @property
    def address(self) -> str:
        return self.node.ip

    def start(self, command: Command, log_path: Path) -> RemoteProcess:
        return RemoteProcess(self, command, log_path)

    def keeper(self) -> Any:
        import ray

        actor = ray.remote(num_cpus=0, max_concurrency=4)(_keeper_class())
        return actor.options(scheduling_strategy=on_node(self.node.node_id)).remote(KEEPER)

    def _probe(self, port: int) -> int:
        import ray

        task = ray.remote(num_cpus=0)(_port_probe()).options(
            scheduling_strategy=on_node(self.node.node_id))
        return int(ray.get(task.remote(self.address, port), timeout=CALL_TIMEOUT_S))

    def free_port(self) -> int:
        port = self._probe(0)
        if port < 0:
            raise CommandFailed(Command(("bind", self.address)), f"no free port on {self.label}")
        return port

    def port_in_use(self, port: int) -> bool:
        return self._probe(port) < 0

    def facts(self, spec: dict[str, Any]) -> dict[str, Any]:
        return facts_on([self.node.node_id], spec, CALL_TIMEOUT_S)[0]


class RemoteProcess:
    """A command's process group on a NodeSite; its output mirrored into `log_path` here."""

    def __init__(self, site: NodeSite, command: Command, log_path: Path,
                 grace_s: float = 5.0) -> None:
        import ray

        self.command = command
        self.log_path = log_path
        self.site = site
        self._offset = 0
        self._rc: int | None = None
        self._lost_node = False  # the actor or its node is gone: nothing more to read
        self._released = False
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.touch()  # as a local process's log exists once it starts, output or not
        self._actor = site.keeper()
        registry = process_registry.current()
        token = registry.new_token()  # marks the group's command as this run's (see record)
        env = {k: str(v) for k, v in command.env.items()} | site.env | {ENV_TOKEN: token}
        call = self._actor.start.remote(list(command.argv), env, command.cwd, list(site.cores),
                                        paths_named(command), grace_s, os.getcwd())
        try:
            got: dict[str, Any] = ray.get(call, timeout=CALL_TIMEOUT_S)
        except Exception as exc:  # the actor could not be placed or died: name the node
            ray.kill(self._actor)
            raise CommandFailed(command, f"could not start on node {site.label}: {exc}") from None
        if "error" in got:
            ray.kill(self._actor)
            why = f"could not start on node {site.label}: {got['error']}"
            if got.get("missing"):
                why += f"; {SHARED_STORAGE}"
            raise CommandFailed(command, why)
        self._pid = int(got["pid"])
        self.pgid = int(got["pgid"])
        with contextlib.suppress(OSError):  # a full /tmp must not stop the run
            registry.record(self._pid, self.pgid, command.argv, token, str(log_path), site.label)

    @property
    def pid(self) -> int:
        """The command's pid on its node (not on this host)."""
        return self._pid

    def _pull(self) -> None:
        """Append the node's new output to the local log; note the exit once all is read."""
        import ray

        while True:
            try:
                got = ray.get(self._actor.follow.remote(self._offset, CHUNK),
                              timeout=CALL_TIMEOUT_S)
            except Exception as exc:  # the node or its actor is gone: the group is lost
                self._lost(exc)
                return
            data: bytes = got["data"]
            if data:
                with self.log_path.open("ab") as fh:
                    fh.write(data)
                self._offset += len(data)
            if got["rc"] is not None:
                self._rc = int(got["rc"])
            if len(data) < CHUNK:
                return

    def _lost(self, exc: BaseException) -> None:
        with self.log_path.open("a", encoding="utf-8") as fh:
            fh.write(f"\n[harness] lost the keeper of this process on node {self.site.label}: "
                     f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}\n")
        self._rc = -int(signal.SIGKILL)
        self._lost_node = True

    def poll(self) -> int | None:
        if self._rc is None and not self._lost_node and not self._released:
            self._pull()
        return self._rc

    def wait(self, timeout_s: float) -> int:
        """Wait for exit; on timeout stop the group and raise CommandFailed with the log tail."""
        deadline = time.monotonic() + timeout_s
        try:
            while (code := self.poll()) is None:
                if time.monotonic() > deadline:
                    self.stop()
                    raise CommandFailed(
                        self.command, f"timed out after {timeout_s:g} s on node "
                        f"{self.site.label}", tail(self.log_path))
                time.sleep(0.2)
        except BaseException:
            self.stop()
            raise
        return code

    def stop(self, grace_s: float = 5.0) -> None:
        """End the group on the node, bring the rest of its output over, release the actor."""
        import ray

        if self._released:
            return
        self._released = True
        try:
            if not self._lost_node:
                ray.get(self._actor.stop.remote(grace_s), timeout=grace_s + CALL_TIMEOUT_S)
                self._pull()
                ray.get(self._actor.close.remote(), timeout=CALL_TIMEOUT_S)
        except Exception as exc:  # a lost node: its keeper ends the group itself
            self._lost(exc)
        finally:
            ray.kill(self._actor)


def own_node_id() -> str:
    """The Ray node this process is a driver on."""
    import ray

    return str(ray.get_runtime_context().get_node_id())


def site_for(node: LeasedNode, env: dict[str, str], cores: tuple[int, ...],
             own: Callable[[], str] = own_node_id) -> NodeSite | None:
    """The site of a lease's first node, or None when it is the harness's own node."""
    if node.node_id == own():
        return None
    return NodeSite(node, env, cores)

