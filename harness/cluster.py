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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.cluster_layout import ADDRESS_OPTION
from harness.cluster_layout import DEFAULT_RAY_PORT
from harness.cluster_layout import HEAD_OPTION
from harness.cluster_layout import RAY_START_HINT
from harness.cluster_layout import UNKNOWN_HEAD
from harness.cluster_layout import ClusterError
from harness.cluster_layout import ClusterFigures
from harness.cluster_layout import NodeFigures
from harness.cluster_layout import Placement
from harness.cluster_layout import cluster_address
from harness.cluster_layout import figures_from_nodes
from harness.cluster_layout import fit_reason
from harness.cluster_layout import head_ip
from harness.cluster_layout import nodes_needed
from harness.cluster_layout import parse_ray_status
from harness.cluster_layout import ray_port
from harness.cluster_layout import start_commands
from harness.cluster_layout import uses_ray

# callers use `cluster.<name>` for the layout's plain data too
__all__ = [
    "DEFAULT_RAY_PORT",
    "ADDRESS_OPTION",
    "HEAD_OPTION",
    "UNKNOWN_HEAD",
    "RAY_START_HINT",
    "ClusterError",
    "NodeFigures",
    "ClusterFigures",
    "figures_from_nodes",
    "parse_ray_status",
    "Placement",
    "fit_reason",
    "nodes_needed",
    "uses_ray",
    "cluster_address",
    "head_ip",
    "ray_port",
    "start_commands",
    "local_facts",
    "facts_on",
    "node_label",
    "on_node",
    "RayCluster",
    "shared",
    "shutdown_shared",
]


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
            # required names: whether they are set, never their values (tokens stay here)
            "env_set": {k: bool(os.environ.get(k)) for k in spec.get("env_set", [])},
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
            facts["paths"][f"${name}"] = value is not None and os.path.exists(value)
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


def node_label(ip: str, node_id: str) -> str:
    """How reports and records name a Ray node: "ip/node-id" (its first 8 hex digits)."""
    return f"{ip}/{node_id[:8]}"


def on_node(node_id: str) -> Any:
    """Ray's scheduling strategy that runs a task or actor on node `node_id`, nowhere else."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id, soft=False)


def facts_on(
    node_ids: Sequence[str], spec: dict[str, Any], timeout_s: float
) -> list[dict[str, Any]]:
    """The same probe on each of the Ray nodes `node_ids` (a task pinned to each), in order."""
    import ray

    probe = ray.remote(num_cpus=0)(_facts_function())
    refs = [probe.options(scheduling_strategy=on_node(n)).remote(spec) for n in node_ids]
    try:
        found: list[dict[str, Any]] = ray.get(refs, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        raise ClusterError(f"per-node probes did not finish within {timeout_s:g} s") from None
    return found


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

    def node_facts(
        self, spec: dict[str, Any], timeout_s: float = 120.0, only: frozenset[str] | None = None
    ) -> dict[str, dict[str, Any]]:
        """The probe on every alive node (or those of node ids `only`), keyed by 'ip/node-id'."""
        alive = [n for n in self.figures().alive if only is None or n.node_id in only]
        results = facts_on([n.node_id for n in alive], spec, timeout_s)
        return {node_label(n.ip, n.node_id): r for n, r in zip(alive, results, strict=True)}

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
_view: RayCluster | None = None  # a leased unit's view (harness.workplan.leased_cluster)


@contextlib.contextmanager
def leased_view(view: RayCluster) -> Iterator[None]:
    """While a work unit holds a lease, `shared()` gives its stages the lease's view, so a
    stage's own reservation is the lease's group instead of a second one Ray cannot place."""
    global _view
    before, _view = _view, view
    try:
        yield
    finally:
        _view = before


def shared(
    options: Mapping[str, Any], nodes: int, per_node: Mapping[str, float], can_start: bool
) -> RayCluster:
    """The session's cluster: the configured one, else (cpu backend) a local one started once."""
    global _shared
    if _view is not None:
        return _view
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
