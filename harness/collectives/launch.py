"""Run a stage's per-node commands together: on this host, or one per Ray node.

Commands without a node run here as process groups (harness.process). Commands with
`Command.node = i` run on the i-th node of the cell's placement group through a NodeRunner
actor that holds that node's bundle (`{"HPU": 8}` on Gaudi, so Ray sets
HABANA_VISIBLE_MODULES for it), the multi-node shape of both hccl_demo and the gloo benchmark.
If one command fails the others are stopped: a collective cannot finish without every rank.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

from harness.cluster import Placement
from harness.cluster import RayCluster
from harness.process import Command
from harness.process import CommandFailed
from harness.process import Running
from harness.process import start
from harness.process import tail
from harness.process import wait_for

OUTPUT_CAP = 2_000_000  # characters of a node's output brought back through Ray


@dataclass
class CommandOutput:
    """What one command left: exit status, its log here, and files collected from its node."""

    command: Command
    returncode: int | None
    log_path: Path
    files: dict[str, str] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def log_name(command: Command, index: int) -> str:
    return f"node{command.node}.log" if command.node is not None else f"command{index}.log"


def run_local(
    commands: Sequence[Command], workdir: Path, env: Mapping[str, str], timeout_s: float
) -> list[CommandOutput]:
    """Start every command at once on the cell's node (here, or a `pytest -n` unit's leased
    node: harness.process.start); wait for all; the first failure stops the rest."""
    procs: list[Running] = []
    try:
        for i, cmd in enumerate(commands):
            merged = Command(cmd.argv, {**env, **cmd.env}, cmd.description, cmd.cwd, cmd.node)
            procs.append(start(merged, workdir / log_name(cmd, i)))
        first = wait_for(procs, timeout_s).timed_out
        if first is not None:
            raise CommandFailed(
                first.command, f"timed out after {timeout_s:g} s", tail(first.log_path)
            )
    finally:
        for proc in procs:  # (stop() waits out its grace while the group's zombies are unreaped)
            proc.stop(grace_s=2.0)
    return [
        CommandOutput(cmd, p.poll(), p.log_path) for cmd, p in zip(commands, procs, strict=True)
    ]


def _runner_class() -> type:
    """NodeRunner, defined in a closure so Ray ships it by value (stdlib only inside)."""

    class NodeRunner:
        """Runs one command on its node in its own process group; `stop` ends that group."""

        def __init__(self) -> None:
            self.proc: Any = None  # subprocess.Popen, imported on the node

        def run(
            self,
            argv: list[str],
            env: dict[str, str],
            cwd: str | None,
            timeout_s: float,
            collect: list[str],
            cap: int,
        ) -> dict[str, Any]:
            import os
            import signal
            import socket
            import subprocess
            import tempfile

            for path in collect:  # fresh output files (hccl_demo appends to its CSV)
                os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
                if os.path.exists(path):
                    os.remove(path)
            with tempfile.TemporaryFile("w+b") as log:
                try:
                    self.proc = subprocess.Popen(
                        argv,
                        env={**os.environ, **env},
                        cwd=cwd,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                except OSError as exc:
                    return {"rc": None, "out": f"could not start: {exc}", "files": {}}
                try:
                    rc = self.proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait()
                    rc = None
                log.seek(0)
                out = log.read().decode("utf-8", "replace")[-cap:]
            files = {}
            for path in collect:
                try:
                    with open(path, encoding="utf-8", errors="replace") as fh:
                        files[path] = fh.read()[-cap:]
                except OSError:
                    pass
            return {"rc": rc, "out": out, "files": files, "host": socket.gethostname()}

        def stop(self) -> None:
            import contextlib
            import os
            import signal

            if self.proc is not None and self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)

    return NodeRunner


def run_on_nodes(
    commands: Sequence[Command],
    cluster: RayCluster,
    placement: Placement,
    workdir: Path,
    env: Mapping[str, str],
    timeout_s: float,
    collect: Mapping[int, list[str]] | None = None,
) -> list[CommandOutput]:
    """One NodeRunner per command, in bundle `command.node` of the cell's placement group."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    res, per = placement.resource, placement.per_node
    demand: dict[str, Any] = (
        {"num_cpus": per} if res == "CPU" else {"num_cpus": 0, "resources": {res: per}}
    )
    runner = ray.remote(max_concurrency=2)(_runner_class())
    outputs: list[CommandOutput] = []
    with cluster.reserve(placement) as group:
        actors = [
            runner.options(
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    group, placement_group_bundle_index=int(cmd.node or 0)
                ),
                **demand,
            ).remote()
            for cmd in commands
        ]
        refs = [
            actor.run.remote(
                list(cmd.argv),
                {**env, **cmd.env},
                cmd.cwd,
                timeout_s,
                (collect or {}).get(int(cmd.node or 0), []),
                OUTPUT_CAP,
            )
            for actor, cmd in zip(actors, commands, strict=True)
        ]
        try:
            results = _gather(ray, refs, actors, timeout_s + 60)
        finally:
            for actor in actors:
                ray.kill(actor)
    for i, (cmd, res_) in enumerate(zip(commands, results, strict=True)):
        path = workdir / log_name(cmd, i)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(res_["out"], encoding="utf-8")
        outputs.append(CommandOutput(cmd, res_["rc"], path, dict(res_.get("files", {}))))
    return outputs


def _gather(
    ray: Any, refs: list[Any], actors: list[Any], timeout_s: float
) -> list[dict[str, Any]]:
    """Wait for every node; when one fails, stop the others (their collective cannot finish)."""
    pending, done = list(refs), {}
    deadline = time.monotonic() + timeout_s
    while pending:
        ready, pending = ray.wait(
            pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic())
        )
        if not ready:
            for actor in actors:
                actor.stop.remote()
            raise TimeoutError(f"node commands did not finish within {timeout_s:g} s")
        for ref in ready:
            done[ref] = ray.get(ref)
            if done[ref]["rc"] != 0:
                for actor in actors:
                    actor.stop.remote()
    return [done[r] for r in refs]


def has_nodes(commands: Sequence[Command]) -> bool:
    """Whether the commands are meant for Ray nodes (multi-node cells)."""
    return any(c.node is not None for c in commands)


def remove_stale(paths: Sequence[Path]) -> None:
    """Rendezvous and CSV files from an earlier attempt would confuse this one."""
    for path in paths:
        if path.exists():
            os.remove(path)


def rounds(commands: Sequence[Command]) -> list[list[Command]]:
    """Commands that run together: one per node (node 0 starts a round); a local one alone."""
    out: list[list[Command]] = []
    for cmd in commands:
        if cmd.node is None or cmd.node == 0 or not out:
            out.append([cmd])
        else:
            out[-1].append(cmd)
    return out
