"""What a cell needs from Ray and what Ray has, as plain data: `ray status` figures, the
placement a cell asks for, the cluster's address and the seeds' `ray start` commands.

Pure functions only (no ray import), so plans and unit tests use them without a cluster;
harness.cluster does the connecting and reserving.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from harness.cell import Cell
from harness.devices import nodes_for
from harness.devices import ranks
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
    out: list[NodeFigures] = []
    total: dict[str, float] = {}
    used: dict[str, float] = {}
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
        # calibrate_model.sh has no PP (-t only): the calibration's ranks are TP x EP/TP
        nodes = max(nodes, nodes_for(ranks(tp, 1, ep), cards_per_node))
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
