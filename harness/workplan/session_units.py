"""The session's part in a `pytest -n N` run: plan units (controller), hold leases (worker).

A mixin of `HarnessSession` (harness/session.py), so its hooks are the registered session's;
without `-n` none of its state is set and every hook here does nothing.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING
from typing import Any

import pytest

from harness.cell import Cell
from harness.cell import Stage
from harness.errors import HarnessError
from harness.stages.base import Recorder

if TYPE_CHECKING:
    from harness.backends.contracts import Backend
    from harness.matrix import Matrix
    from harness.options import RunOptions
    from harness.results import RunStore
    from harness.workplan.run import ClusterShape
    from harness.workplan.units import WorkPlan
    from harness.workplan.worker import UnitWorker
    from harness.workplan.xdist import UnitScheduling


class UnitSession:
    """Work units on the run's Ray cluster (harness/workplan/)."""

    # the session's, used here
    backend: Backend
    matrix: Matrix
    options: RunOptions
    store: RunStore
    failures: dict[str, str]
    _selected_pair_set: frozenset[tuple[str, str]]

    plan: WorkPlan | None = None  # the controller's plan of the selected cells
    shape: ClusterShape | None = None  # the cluster it is laid on
    units: UnitWorker | None = None  # a worker's leases
    scheduling: UnitScheduling | None = None  # the xdist controller's scheduling
    _index: dict[str, int] | None = None  # a worker's item nodeid -> its collection index

    if TYPE_CHECKING:  # the session's methods this mixin calls

        @property
        def _cells_by_id(self) -> dict[str, Cell]: ...

        def cells_for(self, stage: Stage) -> list[Cell]: ...

        def open_store(self) -> None: ...

    def plan_units(self) -> None:
        """Controller: start or join the run's Ray cluster, plan the selected cells onto it (a
        cell that cannot fit is a HarnessError naming it) and record the cluster's shape."""
        from harness.workplan import run

        cells = [c for s in Stage for c in self.cells_for(s)]
        cells = list({c.id: c for c in cells}.values())
        if not cells:
            return
        self.shape = run.start_cluster(self.backend, cells, self.store.run_id, self.store.dir)
        self.plan = run.plan_run(cells, self.options.stages, self.shape)
        if self.shape.unused():
            print(f"harness: {self.shape.unused()}", file=sys.stderr)
        self.open_store()
        self.store.append_record(self.shape.as_record())

    def join_units(self, cluster: dict[str, Any]) -> None:
        """Worker: lease each unit's cards while its items run (harness/workplan/worker.py), on
        the controller's Ray cluster (`ClusterShape.as_record()`), on the nodes it planned on."""
        from harness.workplan import run
        from harness.workplan.leases import LeaseManager
        from harness.workplan.worker import UnitWorker

        run.join(str(cluster["address"]))
        cells = self._cells_by_id
        self.units = UnitWorker(
            self.store.dir,
            self.store,
            LeaseManager(self.store.run_id, str(cluster["resource"]),
                         node_ids=[str(n) for n in cluster["node_ids"]]),
            lambda cell_id: self.backend.ray_cluster(cells[cell_id]),
        )

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        """xdist: whole work units to idle workers as the plan allows (harness/workplan/)."""
        if self.plan is None:
            return None
        from harness.workplan.dispatch import Dispatcher
        from harness.workplan.xdist import UnitScheduling

        plan = self.plan
        self.scheduling = UnitScheduling(
            config, log, lambda items: Dispatcher(plan, items), self.store.dir
        )
        return self.scheduling

    def collected_pairs(self) -> list[tuple[str, str]]:
        """Controller: the (cell, stage) items the workers collected (after -k, -m, --resume);
        [] before collection or without -n. xdist's controller collects nothing itself."""
        if self.scheduling is None:
            return []
        return [(cell, stage.value) for cell, stage in self.scheduling.items()]

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Controller: a failed item of a node phase keeps later units off its nodes."""
        if report.failed and self.scheduling is not None:
            self.scheduling.note_failed(report.nodeid)

    def _enter_unit(self, item: pytest.Item, cell: Cell, stage: Stage, rec: Recorder) -> None:
        """Worker: hold the item's unit's cards (harness/workplan/worker.py)."""
        units = self.units
        assert units is not None
        if self._index is None:
            self._index = {i.nodeid: n for n, i in enumerate(item.session.items)}
        try:
            found = units.setup(
                self._index[item.nodeid], cell.id, stage.value, self._selected_pair_set
            )
        except HarnessError as exc:
            pytest.fail(str(exc), pytrace=False)
        rec.referenced = found.referenced
        for cell_id, why in found.failed_elsewhere.items():
            self.failures.setdefault(cell_id, why)
