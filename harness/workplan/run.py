"""A suite run under `pytest -n N`: its Ray cluster, its plan of units, its node references.

Only distributed runs use this; without `-n` a run goes cell after cell in one process, as it
always did. The controller starts (cpu) or joins (`--ray-address` / RAY_ADDRESS) the run's Ray
cluster before xdist starts its workers, so they join the same cluster, and plans the selected
cells onto it; a cell that cannot fit is a usage error naming it, before anything runs.

A unit leased on another node than the worker's starts its commands there (node_site.py), which
needs the run directory and the models on storage every node sees at the same path. The plan
uses the nodes that verifiably do (a probe on each reads a token the controller wrote into the
results directory, where the run directory is made, and looks for the cells' model paths); the
others are named as unused, with why.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from collections.abc import Collection
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

from harness.backends.contracts import Backend
from harness.cell import Cell
from harness.cell import Stage
from harness.cluster import node_label
from harness.cluster import on_node
from harness.fileio import write_atomic
from harness.workplan.leases import LeaseManager
from harness.workplan.leases import alive_nodes
from harness.workplan.node_site import SHARED_STORAGE
from harness.workplan.plan import build_plan
from harness.workplan.scheduler import Assignment
from harness.workplan.units import NODE_STAGES
from harness.workplan.units import PlanError
from harness.workplan.units import UnitKind
from harness.workplan.units import WorkPlan


def distributed(config: Any) -> bool:
    """Whether this process is the controller of a `pytest -n N` run."""
    return getattr(config, "workerinput", None) is None and config.getoption("dist", "no") != "no"


@dataclass(frozen=True)
class ClusterShape:
    """What the plan is laid on: Ray nodes with `resource`, `cards_per_node` of it each, that
    see the run directory and the models; `unused_nodes`: the others ("ip/node-id" -> why)."""

    resource: str
    node_ids: tuple[str, ...]  # the Ray node of each scheduler node index
    cards_per_node: int
    address: str
    unused_nodes: Mapping[str, str] = field(default_factory=dict)

    @property
    def nodes(self) -> int:
        return len(self.node_ids)

    def as_record(self) -> dict[str, Any]:
        return {"kind": "cluster", "resource": self.resource, "nodes": self.nodes,
                "cards_per_node": self.cards_per_node, "address": self.address,
                "node_ids": list(self.node_ids), "unused_nodes": dict(self.unused_nodes)}

    def unused(self) -> str:
        """Why nodes of the cluster are not used ("" when all are)."""
        if not self.unused_nodes:
            return ""
        why = "; ".join(f"{node}: {reason}" for node, reason in sorted(self.unused_nodes.items()))
        return (f"{len(self.unused_nodes)} Ray node(s) with {self.resource} are not used ({why}); "
                f"the plan uses the {self.nodes} node(s) that see the run's files")


def start_cluster(
    backend: Backend, cells: Sequence[Cell], run_id: str, run_dir: Path
) -> ClusterShape:
    """The run's Ray cluster (started for the widest cell, or joined); its address goes to the
    workers (`join`); leases left by dead holders of earlier runs are removed first. Nodes
    other than this process's are used when they see `run_dir` and the cells' models."""
    from harness.workplan.node_site import own_node_id

    widest = max(cells, key=lambda c: c.nodes)
    resource = backend.ray_placement(widest, widest.nodes).resource
    ray = backend.ray_cluster(widest)
    LeaseManager(run_id, resource).remove_leftovers()
    nodes = alive_nodes(resource)
    own = own_node_id()
    models = sorted({c.model.path for c in cells if c.model.path and Path(c.model.path).exists()})
    others = [n for n in nodes if n["NodeID"] != own]
    unused = storage_problems(others, run_dir, models) if others else {}
    usable = [n for n in nodes if _label(n) not in unused]
    if not usable:
        raise PlanError(
            f"no node of the Ray cluster at {ray.address} with {resource} can run this run's "
            f"units: {'; '.join(f'{k}: {v}' for k, v in sorted(unused.items())) or 'none alive'}"
        )
    cards = min(int(n["Resources"][resource]) for n in usable)
    ids = tuple(n["NodeID"] for n in usable)
    return ClusterShape(resource, ids, cards, ray.address, unused)


def _label(node: Mapping[str, Any]) -> str:
    return node_label(str(node.get("NodeManagerAddress", "?")), str(node["NodeID"]))


def storage_problems(
    nodes: Sequence[Mapping[str, Any]], run_dir: Path, paths: Sequence[str],
    timeout_s: float = 120.0,
) -> dict[str, str]:
    """Per node ("ip/node-id"), what it does not see at the same path: the results directory
    that holds `run_dir` (a token written here must read back the same there; the run directory
    itself is made once the plan holds) or one of `paths`."""
    import ray

    results = run_dir.parent
    results.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(8)
    marker = results / f".node-check-{token}"
    write_atomic(marker, token)
    probe = ray.remote(num_cpus=0)(_storage_probe())
    try:
        refs = [probe.options(scheduling_strategy=on_node(str(n["NodeID"]))).remote(
                    str(marker), token, list(paths)) for n in nodes]
        try:
            found = ray.get(refs, timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            return {_label(n): f"its storage probe did not answer within {timeout_s:g} s"
                    for n in nodes}
    finally:
        marker.unlink(missing_ok=True)
    return {_label(n): f"{why}; {SHARED_STORAGE}" for n, why in zip(nodes, found, strict=True)
            if why}


def _storage_probe() -> Callable[[str, str, list[str]], str]:
    """In a closure, so Ray ships it by value (stdlib only inside)."""

    def probe(marker: str, token: str, paths: list[str]) -> str:
        import os
        import socket

        host = socket.gethostname()
        try:
            with open(marker, encoding="utf-8") as fh:
                seen = fh.read()
        except OSError:
            seen = ""
        if seen != token:
            return f"{host} does not see the results directory {os.path.dirname(marker)}"
        missing = [p for p in paths if not os.path.exists(p)]
        return f"{host} does not see {', '.join(missing)}" if missing else ""

    return probe


def join(address: str) -> None:
    """A worker: its Ray work (leases, a stage's own) goes to the controller's cluster."""
    os.environ["RAY_ADDRESS"] = address


def plan_run(
    cells: Sequence[Cell], stages: Collection[Stage] | None, shape: ClusterShape
) -> WorkPlan:
    """The units of the selected cells on the cluster (a cell that cannot fit: PlanError,
    saying why nodes elsewhere do not count)."""
    try:
        return build_plan(cells, shape.nodes, shape.cards_per_node, stages)
    except PlanError as exc:
        why = shape.unused()
        raise PlanError(f"{exc}{f' ({why})' if why else ''}") from None


def references(
    plan: WorkPlan, found: Assignment, items: Sequence[tuple[str, Stage]]
) -> dict[str, tuple[str, str]]:
    """`cell::stage` of the node-stage `items` sent with a unit that refer to the record of the
    node phase of the unit's nodes instead of measuring them again -> (node phase, the cell
    whose record it is). The phase's own items measure; every other cell on its nodes refers."""
    out = {}
    for cell, stage in items:
        if stage not in NODE_STAGES:
            continue
        for phase in plan.units:
            if phase.kind is not UnitKind.NODE or cell not in phase.cells or not phase.items:
                continue
            if (cell, stage) in phase.items:
                break  # this item is the measurement itself
            if set(found.nodes) <= set(phase.demand.pinned):
                out[f"{cell}::{stage.value}"] = (phase.id, phase.items[0][0])
                break
    return out
