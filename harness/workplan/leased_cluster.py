"""The cluster as a leased unit sees it: stages that reserve Ray bundles get the lease's.

Node phases and calibrations run Ray work of their own (collectives' per-node runners ask
`cluster.reserve(placement)`); inside a lease that holds the node's cards a second placement
group could never be placed. Handing the stage this view instead of the session's RayCluster
makes its reservation the lease's group, so the stage code is unchanged and Ray still accounts
every card once. It never shuts the real cluster down.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from harness.cluster import RayCluster
from harness.cluster_layout import ClusterError
from harness.cluster_layout import ClusterFigures
from harness.cluster_layout import Placement
from harness.workplan.leases import Lease


class LeasedCluster(RayCluster):
    """`cluster` restricted to `lease`: `reserve` yields the lease's group when it covers the
    placement, and refuses (naming the unit) when the stage asks for more than the unit holds."""

    def __init__(self, cluster: RayCluster, lease: Lease) -> None:
        super().__init__(cluster.address)
        self.cluster = cluster
        self.lease = lease

    def figures(self) -> ClusterFigures:
        """The cluster as this unit may use it: what its lease holds counts as free for it (a
        stage's room check must not fail on the cards its own unit reserved)."""
        real = self.cluster.figures()
        res = self.lease.resource
        held = {n.node_id: float(len(n.devices)) for n in self.lease.nodes}
        nodes = tuple(
            replace(n, available={**n.available, res: n.available.get(res, 0.0) + held[n.node_id]})
            if n.node_id in held else n
            for n in real.nodes
        )
        used = {**real.used, res: max(0.0, real.used.get(res, 0.0) - sum(held.values()))}
        return ClusterFigures(nodes, real.total, used)

    @contextlib.contextmanager
    def reserve(self, placement: Placement, timeout_s: float = 60.0) -> Iterator[Any]:
        held = self.lease.nodes
        per_node = min(len(n.devices) for n in held) if held else 0
        if (
            placement.resource != self.lease.resource
            or placement.nodes > len(held)
            or placement.per_node > per_node
        ):
            raise ClusterError(
                f"unit {self.lease.unit} holds {len(held)} node(s) x {per_node} "
                f"{self.lease.resource} but its stage asks for {placement.describe()}; the plan "
                "must give the unit that demand (harness.workplan.plan)"
            )
        yield self.lease.group

    def node_facts(
        self, spec: dict[str, Any], timeout_s: float = 120.0, only: frozenset[str] | None = None
    ) -> dict[str, dict[str, Any]]:
        """The probe on the leased nodes only (the others are other units')."""
        held = frozenset(n.node_id for n in self.lease.nodes)
        return self.cluster.node_facts(spec, timeout_s, held if only is None else only & held)

    def shutdown(self) -> list[int]:
        """Nothing: the session owns the cluster; the lease is released by its holder."""
        return []
