"""Ray for multi-node cells: connect to a cluster or start a local one, check it has room for a
cell, reserve one bundle per node, and run tasks pinned to each node.

The gaudi backend only connects (to the cluster the seeds start with `ray start --head` /
`ray start --address=...` or vLLM's run_cluster.sh); the cpu backend starts a local cluster
(`ray.cluster_utils.Cluster`, one Ray node per cell node on this host). Only what the harness
started is torn down, and the processes it started are checked gone by PID. ray is imported
only inside functions.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

from harness.cell import Cell
from harness.errors import HarnessError
from harness.process import Command

DEFAULT_RAY_PORT = 6379
ADDRESS_OPTION = "ray_address"  # matrix backend_options key, e.g. "192.168.1.101:8850"
HEAD_OPTION = "head_ip"  # matrix backend_options key for the head node's IP
UNKNOWN_HEAD = "<head-ip>"
RAY_START_HINT = (
    "start Ray on the head node (`ray start --head --port=6379`), add each worker "
    "(`ray start --address='<head-ip>:6379'`), check with `ray status`, then set "
    "backend_options.ray_address in the matrix or RAY_ADDRESS"
)


class ClusterError(HarnessError):
    """Ray could not give a cell what it needs; the message carries the `ray status` figures."""


# -- figures -------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeFigures:
    """One Ray node as `ray.nodes()` reports it."""

    node_id: str
    ip: str
    alive: bool = True
    total: Mapping[str, float] = field(default_factory=dict)
    available: Mapping[str, float] = field(default_factory=dict)
    is_head: bool = False


@dataclass(frozen=True)
class ClusterFigures:
    """What `ray status` shows: active nodes and resource usage."""

    nodes: tuple[NodeFigures, ...] = ()
    total: Mapping[str, float] = field(default_factory=dict)
    used: Mapping[str, float] = field(default_factory=dict)

    @property
    def alive(self) -> list[NodeFigures]:
        return [n for n in self.nodes if n.alive]

    def render(self, resources: tuple[str, ...] = ("HPU", "GPU", "CPU")) -> str:
        """One line with the `ray status` figures: active nodes and used/total per resource."""
        shown = [r for r in dict.fromkeys(resources) if r in self.total] or sorted(self.total)[:3]
        usage = ", ".join(f"{self.used.get(r, 0.0):.1f}/{self.total[r]:.1f} {r}" for r in shown)
        ips = sorted({n.ip for n in self.alive if n.ip})
        where = f" ({', '.join(ips)})" if ips else ""
        return f"ray status: {len(self.alive)} active node(s){where}; usage {usage or 'none'}"


def figures_from_nodes(nodes: list[dict[str, Any]]) -> ClusterFigures:
    """Figures from `ray.nodes()` plus `available` per node (ray.state's per-node view)."""
    out, total, used = [], {}, {}
    for node in nodes:
        res = {k: float(v) for k, v in node.get("Resources", {}).items() if _plain(k)}
        # a resource missing from the available view is fully used (placement groups hold it)
        avail = (
            {k: float(node["Available"].get(k, 0.0)) for k in res} if "Available" in node else res
        )
        alive = bool(node.get("Alive", node.get("alive", True)))
        out.append(
            NodeFigures(
                node_id=node["NodeID"],
                ip=node.get("NodeManagerAddress", ""),
                alive=alive,
                total=res,
                available=avail,
                is_head="node:__internal_head__" in node.get("Resources", {}),
            )
        )
        if alive:
            for k, v in res.items():
                total[k] = total.get(k, 0.0) + v
                used[k] = used.get(k, 0.0) + v - avail.get(k, v)
    out.sort(key=lambda n: (not n.is_head, n.ip, n.node_id))
    return ClusterFigures(tuple(out), total, used)


def _plain(resource: str) -> bool:
    """Not Ray's bookkeeping (`node:<ip>`, placement groups' `HPU_group_<id>`)."""
    return "node:" not in resource and "_group_" not in resource


def parse_ray_status(text: str) -> ClusterFigures:
    """Figures from `ray status` output (per-node resources are not in it, totals are)."""
    nodes, total, used, section = [], {}, {}, ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.endswith(":") and line[:-1] in ("Active", "Pending", "Recent failures", "Usage"):
            section = line[:-1]
            continue
        parts = line.split()
        if section == "Active" and len(parts) == 2 and parts[1].startswith("node_"):
            nodes.append(NodeFigures(node_id=parts[1].removeprefix("node_"), ip=""))
        elif section == "Usage" and len(parts) >= 2 and "/" in parts[0]:
            u, _, t = parts[0].partition("/")
            name = parts[1]
            total[name], used[name] = _quantity(t), _quantity(u)
        elif line.startswith("Demands"):
            section = ""
    return ClusterFigures(tuple(nodes), total, used)


def _quantity(text: str) -> float:
    units = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit) and text[: -len(unit)].replace(".", "", 1).isdigit():
            return float(text[: -len(unit)]) * units[unit]
    return float(text)


# -- placement -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """Bundles for a cell: one `{resource: per_node}` bundle per node, STRICT_SPREAD."""

    resource: str
    per_node: float
    nodes: int

    @property
    def strategy(self) -> str:
        return "STRICT_SPREAD" if self.nodes > 1 else "STRICT_PACK"

    @property
    def bundles(self) -> list[dict[str, float]]:
        return [{self.resource: self.per_node} for _ in range(self.nodes)]

    def describe(self) -> str:
        need = self.per_node * self.nodes
        return (
            f"{self.nodes} node(s) x {self.per_node:g} {self.resource} = {need:g} {self.resource} "
            f"({self.strategy}, one bundle per node)"
        )


def fit_reason(placement: Placement, figures: ClusterFigures) -> str | None:
    """Why the cluster cannot take the placement now (with its figures), or None."""
    res, per = placement.resource, placement.per_node
    free = [n for n in figures.alive if n.available.get(res, 0.0) >= per]
    if len(free) >= placement.nodes:
        return None
    have = [
        f"{n.ip or n.node_id[:8]}: {n.available.get(res, 0.0):g}/{n.total.get(res, 0.0):g}"
        for n in figures.alive
    ]
    return (
        f"needs {placement.describe()} but only {len(free)} node(s) have {per:g} {res} free "
        f"[{'; '.join(have) or 'no nodes'}]; {figures.render((res, 'CPU'))}"
    )


def nodes_needed(cell: Cell, cards_per_node: int) -> int:
    """Nodes the cell's Ray work spans: its own, or its calibration's when that is wider (the
    seeds calibrate Llama-3.1-405B at TP16 over two nodes, then serve it at TP8 on one)."""
    nodes = cell.nodes
    if cell.is_fp8 and cell.runs("calibration"):
        cal = cell.settings.calibration
        tp, ep = cal.calibrate_tp or cell.tp, cal.calibrate_ep or cell.ep
        world = tp * cell.pp * (ep // tp if ep > tp else 1)
        nodes = max(nodes, -(-world // cards_per_node))
    return nodes


def uses_ray(cell: Cell, cards_per_node: int, environ: Mapping[str, str]) -> bool:
    """preflight.use_ray, else: the cell spans nodes, or a cluster address is configured."""
    choice = cell.settings.preflight.use_ray
    if choice is not None:
        return choice
    configured = cluster_address(cell.backend_options, environ) is not None
    return nodes_needed(cell, cards_per_node) > 1 or configured


# -- addresses and the commands of the seeds ------------------------------------------------


def cluster_address(options: Mapping[str, Any], environ: Mapping[str, str]) -> str | None:
    """The Ray address to connect to: the matrix's backend_options.ray_address, else RAY_ADDRESS."""
    address = options.get(ADDRESS_OPTION) or environ.get("RAY_ADDRESS")
    return str(address) if address else None


def head_ip(options: Mapping[str, Any], environ: Mapping[str, str]) -> str | None:
    """The head node's IP: backend_options.head_ip, the Ray address's host, or VLLM_HOST_IP."""
    if options.get(HEAD_OPTION):
        return str(options[HEAD_OPTION])
    address = cluster_address(options, environ)
    if address and address not in ("auto", "local"):
        return address.removeprefix("ray://").rsplit(":", 1)[0]
    return environ.get("VLLM_HOST_IP") or None


def ray_port(options: Mapping[str, Any], environ: Mapping[str, str]) -> int:
    address = cluster_address(options, environ) or ""
    tail = address.rsplit(":", 1)[-1] if ":" in address else ""
    return int(tail) if tail.isdigit() else DEFAULT_RAY_PORT


def start_commands(nodes: int, head: str | None, port: int) -> list[Command]:
    """`ray start` on the head and each worker, then `ray status` (seeds 000 and 003)."""
    host = head or UNKNOWN_HEAD
    cmds = [
        Command(
            ("ray", "start", "--head", f"--node-ip-address={host}", f"--port={port}"),
            description="Ray head (the harness connects to it; run once, seed 003)",
            node=0,
        )
    ]
    cmds += [
        Command(("ray", "start", f"--address={host}:{port}"), description="", node=i)
        for i in range(1, nodes)
    ]
    cmds.append(Command(("ray", "status"), description="the cluster must list every node", node=0))
    return cmds


# -- per-node facts (run in Ray tasks: stdlib only, shipped by value) ------------------------


def _facts_function() -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A stdlib-only probe; defined in a closure so cloudpickle ships it by value to nodes
    that do not have the harness installed (which is one of the things preflight finds)."""

    def node_facts(spec: dict[str, Any]) -> dict[str, Any]:
        import importlib.metadata as md
        import importlib.util
        import os
        import platform
        import socket
        import subprocess
        import sys

        facts: dict[str, Any] = {
            "hostname": socket.gethostname(),
            "python": platform.python_version(),
            "executable": sys.executable,
            "cores": len(os.sched_getaffinity(0)),
            "env": {k: os.environ.get(k) for k in spec.get("env", [])},
            "packages": {},
            "modules": {},
            "commands": {},
            "paths": {},
        }
        for name in spec.get("packages", []):
            try:
                facts["packages"][name] = md.version(name)
            except md.PackageNotFoundError:
                facts["packages"][name] = None
        for name in spec.get("modules", []):
            found = importlib.util.find_spec(name)
            facts["modules"][name] = found.origin if found else None
        for name, path in spec.get("paths", {}).items():
            facts["paths"][name] = os.path.exists(path)
        for name in spec.get("env_paths", []):  # env vars naming files, e.g. QUANT_CONFIG
            value = os.environ.get(name)
            facts["paths"][f"${name}"] = bool(value) and os.path.exists(value)
        gov = "/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"
        try:
            with open(gov) as fh:
                facts["cpu_governor"] = fh.read().strip()
        except OSError:
            facts["cpu_governor"] = None
        facts["interfaces"] = (
            sorted(os.listdir("/sys/class/net")) if os.path.isdir("/sys/class/net") else []
        )
        for name, argv in spec.get("commands", {}).items():
            try:
                done = subprocess.run(
                    argv,
                    capture_output=True,
                    text=True,
                    timeout=spec.get("timeout_s", 60),
                    start_new_session=True,
                )
                facts["commands"][name] = {
                    "rc": done.returncode,
                    "out": (done.stdout + done.stderr)[-20000:],
                }
            except (OSError, subprocess.SubprocessError) as exc:
                facts["commands"][name] = {"rc": None, "out": f"{type(exc).__name__}: {exc}"}
        return facts

    return node_facts


def local_facts(spec: dict[str, Any]) -> dict[str, Any]:
    """The same probe, in this process (single-node cells need no Ray)."""
    return _facts_function()(spec)


# -- the cluster --------------------------------------------------------------------------


class RayCluster:
    """A connection to Ray; `shutdown()` stops the cluster only if the harness started it."""

    def __init__(self, address: str, local: Any = None, tmpdir: Path | None = None) -> None:
        self.address = address
        self._local = local  # ray.cluster_utils.Cluster when the harness started it
        self._tmpdir = tmpdir
        self._pids = self._collect_pids()

    @property
    def started_here(self) -> bool:
        return self._local is not None

    @classmethod
    def connect(cls, address: str) -> RayCluster:
        """Join an existing cluster as a driver; never stops it."""
        import ray

        try:
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ClusterError(
                f"cannot connect to Ray at {address}: {exc}; {RAY_START_HINT}"
            ) from None
        return cls(address)

    @classmethod
    def start_local(cls, nodes: int, per_node: Mapping[str, float]) -> RayCluster:
        """Start `nodes` Ray nodes on this host (head first) with `per_node` resources each."""
        import ray
        from ray.cluster_utils import Cluster

        if ray.is_initialized():
            raise ClusterError("this process is already connected to Ray; shut it down first")
        tmpdir = Path(tempfile.mkdtemp(prefix="hr", dir="/tmp"))  # short: socket paths < 108
        os.environ["RAY_TMPDIR"] = str(tmpdir)
        args = {
            "num_cpus": int(per_node.get("CPU", 1)),
            "resources": {k: v for k, v in per_node.items() if k != "CPU"},
            "object_store_memory": 80 * 2**20,
            "include_dashboard": False,
        }
        local = None
        try:
            local = Cluster(initialize_head=True, head_node_args=args, shutdown_at_exit=True)
            for _ in range(nodes - 1):
                local.add_node(**{k: v for k, v in args.items() if k != "include_dashboard"})
            local.wait_for_nodes()
            ray.init(address=local.address, log_to_driver=False)
        except BaseException:
            if local is not None:
                local.shutdown()
            shutil.rmtree(tmpdir, ignore_errors=True)
            raise
        return cls(local.address, local, tmpdir)

    def _collect_pids(self) -> dict[str, list[int]]:
        if self._local is None:
            return {}
        pids: dict[str, list[int]] = {}
        for node in self._local.list_all_nodes():
            for kind, infos in node.all_processes.items():
                pids.setdefault(kind, []).extend(i.process.pid for i in infos)
        return pids

    def pids(self) -> dict[str, list[int]]:
        """Processes the harness started for this cluster, by kind (raylet, gcs_server, ...)."""
        return {k: list(v) for k, v in self._pids.items()}

    def figures(self) -> ClusterFigures:
        import ray

        nodes = ray.nodes()
        per_node = _available_per_node()
        for node in nodes:
            if node["NodeID"] in per_node:
                node["Available"] = per_node[node["NodeID"]]
        return figures_from_nodes(nodes)

    @contextlib.contextmanager
    def reserve(self, placement: Placement, timeout_s: float = 60.0) -> Iterator[Any]:
        """A placement group for the cell, removed on exit; refusal carries the figures."""
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.placement_group import remove_placement_group

        reason = fit_reason(placement, self.figures())
        if reason:
            raise ClusterError(reason)
        group = placement_group(placement.bundles, strategy=placement.strategy)
        try:
            try:
                ray.get(group.ready(), timeout=timeout_s)
            except ray.exceptions.GetTimeoutError:
                raise ClusterError(
                    f"Ray did not place {placement.describe()} within {timeout_s:g} s; "
                    f"{self.figures().render((placement.resource, 'CPU'))}"
                ) from None
            yield group
        finally:
            remove_placement_group(group)

    def node_facts(self, spec: dict[str, Any], timeout_s: float = 120.0) -> dict[str, dict]:
        """The probe on every alive node (a task pinned to each), keyed by 'ip/node-id'."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        probe = ray.remote(num_cpus=0)(_facts_function())
        alive = self.figures().alive
        refs = [
            probe.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(n.node_id, soft=False)
            ).remote(spec)
            for n in alive
        ]
        try:
            results = ray.get(refs, timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise ClusterError(f"per-node probes did not finish within {timeout_s:g} s") from None
        return {f"{n.ip}/{n.node_id[:8]}": r for n, r in zip(alive, results, strict=True)}

    def shutdown(self) -> list[int]:
        """Disconnect; stop the cluster if the harness started it. Returns PIDs still alive."""
        import ray

        ray.shutdown()
        if self._local is None:
            return []
        self._local.shutdown()
        self._local = None
        left = _wait_gone([p for pids in self._pids.values() for p in pids], 10.0)
        for pid in left:  # only processes this cluster started
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        left = _wait_gone(left, 5.0)
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            if os.environ.get("RAY_TMPDIR") == str(self._tmpdir):
                del os.environ["RAY_TMPDIR"]
        return left


def _available_per_node() -> dict[str, dict[str, float]]:
    from ray._private.state import available_resources_per_node  # DeveloperAPI

    return {k: dict(v) for k, v in available_resources_per_node().items()}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return False


def _wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while True:
        left = [p for p in pids if _alive(p)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


# -- one cluster per session ------------------------------------------------------------------

_shared: RayCluster | None = None


def shared(
    options: Mapping[str, Any], nodes: int, per_node: Mapping[str, float], can_start: bool
) -> RayCluster:
    """The session's cluster: the configured one, else (cpu backend) a local one started once."""
    global _shared
    address = cluster_address(options, os.environ)
    if _shared is not None:
        if address and _shared.address != address and not _shared.started_here:
            raise ClusterError(f"already connected to Ray at {_shared.address}, not {address}")
        if _shared.started_here and len(_shared.figures().alive) < nodes:
            shutdown_shared()  # a bigger local cluster is needed: restart it
        else:
            return _shared
    if address:
        _shared = RayCluster.connect(address)
    elif can_start:
        _shared = RayCluster.start_local(nodes, per_node)
    else:
        raise ClusterError(f"no Ray cluster configured for a {nodes}-node cell; {RAY_START_HINT}")
    return _shared


def shutdown_shared() -> list[int]:
    """Stop what the harness started (registered at exit; the session may call it earlier).
    Returns the PIDs of started processes still alive (none, normally)."""
    global _shared
    if _shared is None:
        return []
    cluster, _shared = _shared, None
    return cluster.shutdown()


atexit.register(shutdown_shared)
