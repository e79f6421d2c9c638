"""The xdist controller's scheduling: whole work units to idle workers, as the plan allows.

pytest-xdist gives the workers; this object is what its controller asks which items a worker
runs next (xdist's `Scheduling` protocol). It keeps one `Dispatcher` (dispatch.py): a worker
with nothing pending gets the next unit that may start now (its dependencies done, its cards
free), all of the unit's items at once, with the unit's node choice and demand written to
`<run>/units/` first, where the worker reads them to lease the cards (worker.py). A unit ends
with its last item; the worker runs that item without waiting for a successor (xdist's own loop
would hold it until the next batch came, and the next batch may need this unit's cards).

A worker that dies takes its unit with it: the unit's cards are free again (Ray removes the dead
driver's placement group), its remaining items are not run (they are listed in the run's end
record), and the other workers go on.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xdist.report import report_collection_diff
from xdist.workermanage import WorkerController
from xdist.workermanage import parse_tx_spec_config

from harness import fileio
from harness.cell import Stage
from harness.workplan.dispatch import Dispatcher
from harness.workplan.dispatch import suite_item
from harness.workplan.dispatch import write_assignment
from harness.workplan.run import references
from harness.workplan.scheduler import Assignment
from harness.workplan.units import PlanError

LOOSE = "loose"  # the batch of items that belong to no unit (tests without a cell)


def index_path(run_dir: Path) -> Path:
    return run_dir / "units" / "index.json"


class UnitScheduling:
    """xdist scheduling by work unit (see the module docstring)."""

    def __init__(
        self,
        config: Any,
        log: Any,
        dispatcher_for: Callable[[Sequence[str]], Dispatcher],
        run_dir: Path,
        numnodes: int | None = None,
    ) -> None:
        self.config = config
        self.log = log
        self.dispatcher_for = dispatcher_for
        self.run_dir = run_dir
        self.numnodes = numnodes if numnodes is not None else len(parse_tx_spec_config(config))
        self.node2collection: dict[WorkerController, list[str]] = {}
        self.node2pending: dict[WorkerController, list[int]] = {}
        self.collection: list[str] | None = None
        self.dispatcher: Dispatcher | None = None
        self.stuck = ""  # why the rest of the plan cannot run (then the run ends)

    # the Scheduling protocol -------------------------------------------------------------
    @property
    def nodes(self) -> list[WorkerController]:
        return list(self.node2pending)

    @property
    def collection_is_completed(self) -> bool:
        return self.collection is not None or len(self.node2collection) >= self.numnodes

    @property
    def tests_finished(self) -> bool:
        if not self.collection_is_completed or self.dispatcher is None:
            return False
        if any(self.node2pending.values()):
            return False
        return self.dispatcher.finished or bool(self.stuck)

    @property
    def has_pending(self) -> bool:
        if any(self.node2pending.values()):
            return True
        return self.dispatcher is not None and not self.dispatcher.finished and not self.stuck

    def add_node(self, node: WorkerController) -> None:
        assert node not in self.node2pending
        self.node2pending[node] = []

    def add_node_collection(self, node: WorkerController, collection: Sequence[str]) -> None:
        assert node in self.node2pending
        if self.collection_is_completed:  # a replacement worker after a crash
            assert self.collection is not None
            if list(collection) != self.collection:
                raise PlanError(self._collection_diff(node, collection))
        self.node2collection[node] = list(collection)

    def mark_test_complete(
        self, node: WorkerController, item_index: int, duration: float = 0
    ) -> None:
        pending = self.node2pending[node]
        if item_index in pending:
            pending.remove(item_index)
        assert self.dispatcher is not None
        self.dispatcher.complete(item_index)
        self._fill()

    def note_failed(self, nodeid: str) -> None:
        """A worker reported item `nodeid` failed (before it reports the item complete)."""
        if self.collection is not None and self.dispatcher is not None:
            with contextlib.suppress(ValueError):
                self.dispatcher.failed(self.collection.index(nodeid))

    def mark_test_pending(self, item: str) -> None:
        raise NotImplementedError("unit scheduling does not take items back")

    def remove_pending_tests_from_node(
        self, node: WorkerController, indices: Sequence[int]
    ) -> None:
        raise NotImplementedError("unit scheduling does not steal items")

    def remove_node(self, node: WorkerController) -> str | None:
        """A worker went away: at shutdown with nothing pending, or crashed inside a unit.
        A crashed unit's items are settled (its cards are free, the rest never runs)."""
        pending = self.node2pending.pop(node)
        self.node2collection.pop(node, None)
        if not pending:
            return None
        assert self.collection is not None and self.dispatcher is not None
        for index in pending:
            self.dispatcher.complete(index)
        self._fill()
        return self.collection[pending[0]]

    def schedule(self) -> None:
        """Collection is complete on every worker: build the plan's dispatcher, then fill."""
        assert self.collection_is_completed
        if self.collection is None:
            collections = list(self.node2collection.values())
            first = collections[0]
            for node, other in self.node2collection.items():
                if other != first:
                    raise PlanError(self._collection_diff(node, other))
            self.collection = first
            self.dispatcher = self.dispatcher_for(first)
            self._write_index(self.dispatcher)
        self._fill()

    def items(self, indices: Sequence[int] | None = None) -> list[tuple[str, Stage]]:
        """(cell, stage) of the collected suite items at `indices` (None: all of them)."""
        collection = self.collection or []
        nodeids = collection if indices is None else [collection[i] for i in indices]
        return [pair for pair in map(suite_item, nodeids) if pair is not None]

    # how work is handed out ----------------------------------------------------------------
    def _fill(self) -> None:
        """Give every idle worker the next unit that may start; end the run when none can."""
        if self.dispatcher is None:
            return
        for node in self.nodes:
            if node.shutting_down or self.node2pending[node]:
                continue
            batch = self.dispatcher.next_unit()
            if batch is None:
                break
            found, indices = batch
            self._send(node, found, indices)
        if self.dispatcher.finished:
            for node in self.nodes:
                if not self.node2pending[node] and not node.shutting_down:
                    node.shutdown()
            return
        if not any(self.node2pending.values()) and not self.stuck:
            try:
                self.dispatcher.check_progress()
            except PlanError as exc:
                self.stuck = str(exc)
                print(f"harness: the run stops early: {exc}", file=sys.stderr)
                for node in self.nodes:
                    if not node.shutting_down:
                        node.shutdown()

    def _send(self, node: WorkerController, found: Assignment | None, indices: list[int]) -> None:
        if found is not None:
            assert self.dispatcher is not None
            refs = references(self.dispatcher.scheduler.plan, found, self.items(indices))
            write_assignment(self.run_dir, found, indices, refs)
        self.node2pending[node].extend(indices)
        self.log(f"unit {found.unit.id if found else LOOSE}: {len(indices)} item(s) to {node}")
        node.send_runtest_some(indices)

    def _write_index(self, dispatcher: Dispatcher) -> None:
        """Which batch every item belongs to, so a worker knows the last item of its unit."""
        batches = {str(i): unit for unit, idx in dispatcher.items.items() for i in idx}
        batches.update({str(i): LOOSE for i in dispatcher.loose})
        path = index_path(self.run_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        fileio.write_json(path, batches)

    def _collection_diff(self, node: WorkerController, collection: Sequence[str]) -> str:
        first_node = next(iter(self.node2collection))
        diff = report_collection_diff(
            self.node2collection[first_node], list(collection),
            first_node.gateway.id, node.gateway.id,
        )
        return f"the workers collected different items: {diff}"

