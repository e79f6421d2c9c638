"""The worker's side of unit scheduling: a unit's cards held while its items run.

The controller (xdist.py) sends a worker all the items of one unit, and writes the unit's
ticket (dispatch.py) first. When the worker meets the first item of a unit it leases the
unit's cards through Ray (leases.py) and keeps the lease until the unit's last item has run:
the server it starts sees exactly the leased devices (`Lease.env()`: HABANA_VISIBLE_MODULES,
or the cpu cores as VLLM_CPU_OMP_THREADS_BIND), on cpu every process it starts runs on the
leased cores (harness.process.placed), and a stage's own Ray reservation gets the lease's
group (leased_cluster.py). The unit's start, end and cards go to results.jsonl as a `unit` line.

xdist's worker loop holds every item until it has the next one (pytest's `nextitem`); the last
item of a unit is run at once, with no successor, so that its teardown releases the cell's
server and the unit's cards and the controller can hand them to the next unit.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import pytest

from harness import cluster
from harness import process
from harness.cell import Stage
from harness.recording import one_line
from harness.results import RunStore
from harness.results import StageResult
from harness.results import stage_results
from harness.workplan.dispatch import Ticket
from harness.workplan.dispatch import read_assignment
from harness.workplan.figures import UnitRecord
from harness.workplan.leased_cluster import LeasedCluster
from harness.workplan.leases import Lease
from harness.workplan.leases import LeaseManager
from harness.workplan.node_site import own_node_id
from harness.workplan.node_site import site_for
from harness.workplan.units import UnitKind
from harness.workplan.xdist import LOOSE
from harness.workplan.xdist import index_path

RayFor = Callable[[str], cluster.RayCluster]  # a cell id -> the session's Ray cluster


@dataclass(frozen=True)
class ItemSetup:
    """What the session needs before an item of a unit runs."""

    # a node stage whose nodes the node phase measured: that record and the phase's id
    referenced: tuple[StageResult, str] | None = None
    # a new unit: its cells whose stages run in another unit (calibration) failed there
    failed_elsewhere: dict[str, str] = field(default_factory=dict)


class UnitWorker:
    """Which unit an item belongs to, and that unit's lease while its items run."""

    def __init__(
        self, run_dir: Path, store: RunStore, manager: LeaseManager, ray_for: RayFor,
        own_node: Callable[[], str] = own_node_id,
    ) -> None:
        self.run_dir = run_dir
        self.own_node = own_node  # this worker's Ray node (a lease elsewhere: node_site.py)
        self.store = store
        self.manager = manager
        self.ray_for = ray_for
        self._batch_of: dict[int, str] = {}
        self._last_of: dict[str, int] = {}
        self.ticket: Ticket | None = None
        self.lease: Lease | None = None
        self.ran_on = ""  # the unit's node when its commands start there (node_site.py)
        self._stack = contextlib.ExitStack()
        self._started = 0.0

    # which unit ---------------------------------------------------------------------------
    def batch_of(self, index: int) -> str:
        if index not in self._batch_of:
            self._load_index()
        return self._batch_of.get(index, LOOSE)

    def ends_batch(self, index: int) -> bool:
        """Whether item `index` is the last of the unit (or loose batch) it came in."""
        batch = self.batch_of(index)
        return self._last_of.get(batch) == index

    def _load_index(self) -> None:
        try:
            raw = json.loads(index_path(self.run_dir).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        self._batch_of = {int(i): str(b) for i, b in raw.items()}
        self._last_of = {}
        for index, batch in sorted(self._batch_of.items()):
            self._last_of[batch] = index

    # the unit's lease -----------------------------------------------------------------------
    def enter(self, index: int) -> Lease | None:
        """Before item `index` runs: hold its unit's cards (a no-op for the unit's later items
        and for items of no unit). A refusal raises LeaseError naming the unit."""
        unit_id = self.batch_of(index)
        if unit_id == LOOSE or (self.ticket is not None and self.ticket.unit.id == unit_id):
            return self.lease
        self.leave()
        ticket = read_assignment(self.run_dir, unit_id)
        if ticket is None:
            return None
        self.ticket = ticket
        self._started = time.time()
        ray = self.ray_for(ticket.unit.cells[0])  # connects this worker to the run's cluster
        lease = self._stack.enter_context(self.manager.lease(ticket.unit, ticket.nodes))
        self._stack.enter_context(cluster.leased_view(LeasedCluster(ray, lease)))
        # what the unit starts runs on the leased devices (and, on cpu, cores): here, or on
        # the leased node when it is another Ray node than this worker's (node_site.py)
        cores = lease.nodes[0].devices if lease.resource == "CPU" else ()
        site = site_for(lease.nodes[0], lease.env(), cores, self.own_node)
        self._stack.enter_context(process.placed(cores, lease.env(), site))
        self.ran_on = site.label if site is not None else ""
        if ticket.unit.demand.nodes > 1 and ticket.unit.kind is not UnitKind.NODE:
            # a multi-node server or calibration places its own Ray workers (vLLM's Ray
            # executor); the scheduler keeps the cards counted held until the unit ends
            self.manager.hand_over(lease)
        self.lease = lease
        return lease

    def setup(
        self, index: int, cell_id: str, stage: str, selected: frozenset[tuple[str, str]]
    ) -> ItemSetup:
        """Enter item `index`'s unit; say what it refers to and what failed in other units.
        `selected`: the run's (cell, stage) items."""
        before = self.ticket
        self.enter(index)
        ticket = self.ticket
        if ticket is None:
            return ItemSetup()
        referenced = None
        ref = ticket.references.get(f"{cell_id}::{stage}")
        if ref is not None:
            found = self.store.latest(ref[1], stage)
            referenced = (found, ref[0]) if found is not None else None
        failed: dict[str, str] = {}
        if ticket is not before:  # its cells' stages that ran in another unit (calibration)
            sent = {(c, s.value) for c, s in ticket.unit.items}
            elsewhere = [
                (cell, s.value) for cell in ticket.unit.cells for s in Stage
                if (cell, s.value) in selected and (cell, s.value) not in sent
                and f"{cell}::{s.value}" not in ticket.references
            ]
            if elsewhere:
                last = {(r.cell, r.stage): r for r in stage_results(self.store.path)}
                for cell, name in elsewhere:
                    found = last.get((cell, name))
                    if found is not None and found.status == "failed":
                        failed.setdefault(cell, f"{name} failed: {one_line(found.message, cell)}")
        return ItemSetup(referenced, failed)

    def leave(self) -> None:
        """After the unit's last item: release the cards and record the unit as it ran."""
        ticket, lease, ran_on = self.ticket, self.lease, self.ran_on
        self.ticket, self.lease, self.ran_on = None, None, ""
        self._stack.close()
        if ticket is None:
            return
        held = lease.nodes if lease is not None else ()
        nodes = ticket.nodes or tuple(range(len(held)))  # scheduler node indices
        cards = tuple((n, d) for n, on in zip(nodes, held, strict=False) for d in on.devices)
        record = UnitRecord(ticket.unit.id, self._started, time.time(), cards, ticket.unit.kind,
                            ran_on)
        self.store.append_record(record.as_dict())


def run_loop(session: pytest.Session, worker: UnitWorker) -> bool:
    """xdist's worker loop (xdist 3.8 remote.py `pytest_runtestloop`/`run_one_test`), except
    that the last item of a unit runs at once with no successor (see the module docstring).

    execnet runs xdist's remote.py as a module of its own in the worker, so its interactor and
    Marker are found through the plugin manager, not imported."""
    plugins = session.config.pluginmanager.get_plugins()
    interactor = next(p for p in plugins if type(p).__name__ == "WorkerInteractor")
    Marker: Any = type(interactor).run_one_test.__globals__["Marker"]  # noqa: N806

    interactor.channel.setcallback(interactor.handle_command, endmarker=Marker.SHUTDOWN)
    index = interactor.torun.get()
    while index is not Marker.SHUTDOWN:
        ends = worker.ends_batch(index)
        following = Marker.SHUTDOWN if ends else interactor.torun.get()
        item = session.items[index]
        nextitem = None if following is Marker.SHUTDOWN else session.items[following]
        interactor.item_index = index
        start = time.perf_counter()
        try:
            session.config.hook.pytest_runtest_protocol(item=item, nextitem=nextitem)
        except BaseException:  # Ctrl-C, an internal error: the unit's cards go back now
            worker.leave()
            raise
        if ends or nextitem is None:
            worker.leave()
        interactor.sendevent(
            "runtest_protocol_complete", item_index=index, duration=time.perf_counter() - start
        )
        if session.shouldfail or session.shouldstop:
            break
        index = interactor.torun.get() if ends else following
    return True
