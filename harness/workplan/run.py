"""A suite run under `pytest -n N`: its Ray cluster, its plan of units, its node references.

Only distributed runs use this; without `-n` a run goes cell after cell in one process, as it
always did. The controller starts (cpu) or joins (`--ray-address` / RAY_ADDRESS) the run's Ray
cluster before xdist starts its workers, so they join the same cluster, and plans the selected
cells onto it; a cell that cannot fit is a usage error naming it, before anything runs.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Collection
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from harness.backends.contracts import Backend
from harness.cell import Cell
from harness.cell import Stage
from harness.workplan.leases import LeaseManager
from harness.workplan.leases import alive_nodes
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
    """What the plan is laid on: Ray nodes with `resource`, `cards_per_node` of it each; the
    nodes are this host's (the harness starts every unit's processes here)."""

    resource: str
    node_ids: tuple[str, ...]  # the Ray node of each scheduler node index
    cards_per_node: int
    address: str
    elsewhere: int = 0  # nodes of the cluster on other hosts, left unused

    @property
    def nodes(self) -> int:
        return len(self.node_ids)

    def as_record(self) -> dict[str, Any]:
        return {"kind": "cluster", "resource": self.resource, "nodes": self.nodes,
                "cards_per_node": self.cards_per_node, "address": self.address,
                "node_ids": list(self.node_ids), "unused_nodes_elsewhere": self.elsewhere}

    def unused(self) -> str:
        """Why nodes of the cluster are not used ("" when all are)."""
        if not self.elsewhere:
            return ""
        return (f"{self.elsewhere} Ray node(s) with {self.resource} on other hosts are not "
                f"used: under -n the harness starts each unit's server and clients on its own "
                f"host, so it plans onto this host's {self.nodes} node(s); run from each host, "
                "or without -n for cells that span hosts")


def start_cluster(backend: Backend, cells: Sequence[Cell], run_id: str) -> ClusterShape:
    """The run's Ray cluster (started for the widest cell, or joined); its address goes to the
    workers (`join`); leases left by dead holders of earlier runs are removed first."""
    widest = max(cells, key=lambda c: c.nodes)
    resource = backend.ray_placement(widest, widest.nodes).resource
    ray = backend.ray_cluster(widest)
    LeaseManager(run_id, resource).remove_leftovers()
    nodes = alive_nodes(resource)
    here = [n for n in nodes if n.get("NodeManagerAddress") in local_addresses()]
    if not here:
        raise PlanError(
            f"the Ray cluster at {ray.address} has no node with {resource} on this host "
            f"({len(nodes)} elsewhere); under -n the harness runs each unit's processes on its "
            "own host: run it on a node of the cluster"
        )
    cards = min(int(n["Resources"][resource]) for n in here)
    ids = tuple(n["NodeID"] for n in here)
    return ClusterShape(resource, ids, cards, ray.address, len(nodes) - len(here))


def local_addresses() -> set[str]:
    """The addresses Ray may give a node on this host."""
    import ray

    found = {"127.0.0.1", ray.util.get_node_ip_address()}
    with contextlib.suppress(OSError):
        found |= {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)}
    return {str(a) for a in found}


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
