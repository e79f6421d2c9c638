"""Card leases through Ray: a unit's cards are a placement group, held while the unit runs.

Ray does the resource management: a lease is a placement group of `{"HPU": k}` (gaudi) or
`{"CPU": k}` (cpu) bundles, STRICT_PACK on one node or STRICT_SPREAD one bundle per node, pinned
to the scheduler's nodes through Ray's `ray.io/node-id` label. For HPU work Ray picks the card
instances of each bundle and sets HABANA_VISIBLE_MODULES in what it places there; a probe task
holding the bundle reads it, so the server the harness starts on that node sees the same cards.
Ray has no CPU instance ids, so cpu leases take their cores from a small book under a file lock.

A lease is released when its block ends however it ends (success, failure, timeout, Ctrl-C).
Groups are named `harness-lease:<run>:<host>:<pid>:<unit>`: Ray removes a (non-detached) group
when the driver that made it dies; `remove_leftovers`, called at the start of a run, removes any
group, detached or not, whose holder process on this host is gone.
ray is imported only inside functions.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Iterator
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.cluster_layout import ClusterError
from harness.cluster_layout import Placement
from harness.workplan.units import WorkUnit

PREFIX = "harness-lease"
NODE_LABEL = "ray.io/node-id"


class LeaseError(ClusterError):
    """Ray could not lease a unit's cards; the message names the unit and what to do."""


@dataclass(frozen=True)
class LeasedNode:
    node_id: str
    ip: str
    devices: tuple[int, ...]  # HPU card indices (as Ray assigned them) or cpu cores


@dataclass(frozen=True)
class Lease:
    """A held placement group: where the unit runs and which devices it may use."""

    unit: str
    name: str
    resource: str
    nodes: tuple[LeasedNode, ...]
    group: Any  # ray.util.placement_group.PlacementGroup

    @property
    def address(self) -> str:
        """The node a unit's server runs on (its first node); clients connect there."""
        return self.nodes[0].ip

    def env(self, node: int = 0) -> dict[str, str]:
        """What makes a process on lease node `node` use exactly the leased devices."""
        devices = self.nodes[node].devices
        if self.resource == "HPU":
            return {"HABANA_VISIBLE_MODULES": ",".join(str(d) for d in devices)}
        return {"VLLM_CPU_OMP_THREADS_BIND": "|".join(str(d) for d in devices)}


@dataclass(frozen=True)
class GroupName:
    run: str
    host: str
    pid: int
    unit: str

    def render(self) -> str:
        return f"{PREFIX}:{self.run}:{self.host}:{self.pid}:{self.unit}"

    @classmethod
    def parse(cls, name: str) -> GroupName | None:
        parts = name.split(":", 4)
        if len(parts) != 5 or parts[0] != PREFIX or not parts[3].isdigit():
            return None
        return cls(parts[1], parts[2], int(parts[3]), parts[4])


def alive_nodes(resource: str) -> list[dict[str, Any]]:
    """Ray's alive nodes that have `resource`, in the order the scheduler numbers them."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive") and n["Resources"].get(resource, 0) > 0]
    head = "node:__internal_head__"
    return sorted(nodes, key=lambda n: (head not in n["Resources"], n["NodeID"]))


class LeaseManager:
    """Leases for one run (`run_id`) on the connected Ray cluster."""

    def __init__(
        self,
        run_id: str,
        resource: str,
        book: Path | None = None,
        timeout_s: float = 600.0,
        detached: bool = False,
        node_ids: Sequence[str] = (),
    ) -> None:
        if resource not in ("HPU", "CPU"):
            raise ValueError(f"lease resource {resource!r}: HPU (gaudi) or CPU (cpu)")
        self.run_id = run_id
        self.resource = resource
        self.timeout_s = timeout_s
        self.book = book  # cpu: the core book's path (one per host); unused for HPU
        # detached groups outlive their driver (a lease taken by a helper process for a
        # worker): only remove_leftovers removes them when the holder dies
        self.lifetime = "detached" if detached else None
        self.host = socket.gethostname()
        # the Ray node of each scheduler node index (default: alive_nodes' order)
        self.node_ids = tuple(node_ids)

    @contextlib.contextmanager
    def lease(self, unit: WorkUnit, nodes: Sequence[int] = ()) -> Iterator[Lease]:
        """Hold the unit's cards (on scheduler nodes `nodes` when given) for the block."""
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.placement_group import remove_placement_group

        d = unit.demand
        placement = Placement(self.resource, float(d.cards), d.nodes)
        name = GroupName(self.run_id, self.host, os.getpid(), unit.id).render()
        labels = self._labels(unit, nodes)
        group = placement_group(
            placement.bundles,
            strategy=placement.strategy,
            name=name,
            bundle_label_selector=labels or None,
            lifetime=self.lifetime,
        )
        try:
            try:
                ray.get(group.ready(), timeout=self.timeout_s)
            except ray.exceptions.GetTimeoutError:
                res = self.resource
                total = ray.cluster_resources().get(res, 0)
                free = ray.available_resources().get(res, 0)
                raise LeaseError(
                    f"unit {unit.id}: Ray did not place {placement.describe()} within "
                    f"{self.timeout_s:g} s (cluster {total:g} {res}, free {free:g}); check "
                    "`ray status` for other holders, or raise the lease timeout"
                ) from None
            held = self._probe(group, d.nodes, d.cards)
            if self.resource == "CPU":
                held = self._book_cores(name, held, d.cards)
            yield Lease(unit.id, name, self.resource, held, group)
        finally:
            remove_placement_group(group)
            if self.resource == "CPU":
                self._unbook(name)

    def hand_over(self, lease: Lease) -> None:
        """Give the lease's cards to a server that places its own Ray workers (vLLM's Ray
        executor makes its own placement group for a multi-node cell and cannot use ours).

        The scheduler still counts the cards held until the unit ends, and every harness lease
        is pinned to the scheduler's nodes, so no other unit is placed on them meanwhile; the
        server's group dies with the server's process group."""
        from ray.util.placement_group import remove_placement_group

        remove_placement_group(lease.group)

    def _labels(self, unit: WorkUnit, nodes: Sequence[int]) -> list[dict[str, str]]:
        if not nodes:
            return []
        known = self.node_ids or tuple(n["NodeID"] for n in alive_nodes(self.resource))
        if len(nodes) != unit.demand.nodes or max(nodes) >= len(known):
            raise LeaseError(
                f"unit {unit.id}: asked for nodes {list(nodes)} but it needs "
                f"{unit.demand.nodes} of the {len(known)} Ray node(s) with {self.resource}"
            )
        return [{NODE_LABEL: known[i]} for i in nodes]

    def _probe(self, group: Any, bundles: int, cards: int) -> tuple[LeasedNode, ...]:
        """Which node each bundle is on, and (HPU) the card instances Ray gave it."""
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        def where() -> tuple[str, str, str]:
            ctx = ray.get_runtime_context()
            ip = ray.util.get_node_ip_address()
            return ctx.get_node_id(), ip, os.environ.get("HABANA_VISIBLE_MODULES", "")

        if self.resource == "HPU":
            task = ray.remote(num_cpus=0, resources={"HPU": cards})(where)
        else:
            task = ray.remote(num_cpus=cards)(where)
        refs = [
            task.options(scheduling_strategy=PlacementGroupSchedulingStrategy(group, i)).remote()
            for i in range(bundles)
        ]
        out = []
        for node_id, ip, visible in ray.get(refs, timeout=self.timeout_s):
            devices = tuple(int(v) for v in visible.split(",") if v.strip())
            out.append(LeasedNode(node_id, ip, devices))
        return tuple(out)

    def _book_cores(
        self, name: str, held: tuple[LeasedNode, ...], cards: int
    ) -> tuple[LeasedNode, ...]:
        """cpu: take `cards` cores per node not booked by another live lease."""
        out = []
        with self._locked_book() as book:
            live = _live_names()
            for k in [k for k in book if k not in live and k != name]:
                del book[k]
            for node in held:
                used = {c for v in book.values() for n, cs in v if n == node.node_id for c in cs}
                total = int(_node_total(node.node_id, "CPU"))
                cores = tuple(c for c in range(total) if c not in used)[:cards]
                out.append(LeasedNode(node.node_id, node.ip, cores))
            book[name] = [(n.node_id, list(n.devices)) for n in out]
        return tuple(out)

    def _unbook(self, name: str) -> None:
        with self._locked_book() as book:
            book.pop(name, None)

    @contextlib.contextmanager
    def _locked_book(self) -> Iterator[dict[str, list[tuple[str, list[int]]]]]:
        from filelock import FileLock

        path = self.book or Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "harness-cores.json"
        with FileLock(str(path) + ".lock", timeout=60):
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                raw = {}
            book = {k: [(n, list(cs)) for n, cs in v] for k, v in raw.items()}
            yield book
            path.write_text(json.dumps(book), encoding="utf-8")

    def remove_leftovers(self) -> list[str]:
        """Remove harness groups whose holder process on this host is gone; their names."""
        from ray.util.placement_group import PlacementGroup
        from ray.util.placement_group import placement_group_table
        from ray.util.placement_group import remove_placement_group

        removed = []
        for group_id, info in placement_group_table().items():
            parsed = GroupName.parse(info.get("name", ""))
            if parsed is None or info.get("state") == "REMOVED" or parsed.host != self.host:
                continue
            if not _pid_alive(parsed.pid):
                remove_placement_group(PlacementGroup(_group_id(group_id)))
                removed.append(info["name"])
        return removed


def _live_names() -> set[str]:
    from ray.util.placement_group import placement_group_table

    return {v.get("name", "") for v in placement_group_table().values() if v["state"] != "REMOVED"}


def _node_total(node_id: str, resource: str) -> float:
    import ray

    for n in ray.nodes():
        if n["NodeID"] == node_id:
            return float(n["Resources"].get(resource, 0.0))
    return 0.0


def _group_id(hex_id: str) -> Any:
    from ray._raylet import PlacementGroupID

    return PlacementGroupID(bytes.fromhex(hex_id))


def _pid_alive(pid: int) -> bool:
    """Whether `pid` is a live process on this host (a zombie is gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return False
