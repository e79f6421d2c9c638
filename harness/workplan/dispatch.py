"""The policy an xdist controller follows: suite items grouped into units, handed out as the
scheduler allows, with each unit's node choice written where its worker reads it.

pytest-xdist gives the workers; the controller's scheduling object (xdist.py) keeps
one Dispatcher: when a worker is idle it asks `next_unit()` and sends that unit's items to it
(one unit per worker at a time, so its stages share one server and one lease); on each
`mark_test_complete` it calls `complete(index)`, which finishes the unit after its last item.
The worker reads its unit's nodes with `read_assignment` and leases them (leases.py).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

from harness import fileio
from harness.cell import Stage
from harness.workplan.scheduler import Assignment
from harness.workplan.scheduler import Durations
from harness.workplan.scheduler import Scheduler
from harness.workplan.units import NODE_STAGES
from harness.workplan.units import Demand
from harness.workplan.units import PlanError
from harness.workplan.units import UnitKind
from harness.workplan.units import WorkPlan
from harness.workplan.units import WorkUnit

ItemKey = Callable[[str], tuple[str, Stage] | None]
_SUITE = re.compile(r"test_(\w+)\.py::test_\w+\[(.+)\]$")


def suite_item(nodeid: str) -> tuple[str, Stage] | None:
    """`suites/test_accuracy.py::test_accuracy[m/cpu/tp1/bf16-kv-auto]` -> (cell id, stage)."""
    found = _SUITE.search(nodeid)
    if found is None or found.group(1) not in {s.value for s in Stage}:
        return None
    return found.group(2), Stage(found.group(1))


# how far a backfilled unit may delay the first blocked one, as a fraction of its estimate
RELAXED_SLACK = 0.25
# seconds a unit of each kind is assumed to take per stage, before anything is measured: only
# their ratios matter to the order (a unit past its estimate is taken to end now)
PRIOR_STAGE_S = {UnitKind.NODE: 30.0, UnitKind.CALIBRATION: 300.0, UnitKind.SERVING: 100.0}


def prior_estimate(unit: WorkUnit) -> float:
    """A rough duration of `unit` for a real run's scheduler (no cost model of the hardware)."""
    return PRIOR_STAGE_S[unit.kind] * max(1, len(unit.stages))


class Dispatcher:
    """Which items a worker runs next; items of no unit (tests without a cell) go first."""

    def __init__(
        self,
        plan: WorkPlan,
        collection: Sequence[str],
        estimate: Durations | None = None,
        key: ItemKey = suite_item,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.scheduler = Scheduler(plan, estimate or prior_estimate, slack=RELAXED_SLACK)
        self.clock = clock
        self.items: dict[str, list[int]] = {u.id: [] for u in plan.units}
        self.loose: list[int] = []
        for index, nodeid in enumerate(collection):
            unit_id = _unit_of(plan, key(nodeid))
            (self.items[unit_id] if unit_id else self.loose).append(index)
        self._left: dict[str, set[int]] = {}
        self._failed: set[str] = set()  # units with a failed item
        self._unit_of_index = {i: u for u, idx in self.items.items() for i in idx}

    def next_unit(self) -> tuple[Assignment | None, list[int]] | None:
        """The next batch for an idle worker: loose items first, then a unit that may start
        now (with its items in run order); None when nothing can start until a unit ends."""
        if self.loose:
            batch, self.loose = self.loose, []
            return None, batch
        while (found := self.scheduler.start_next(self.clock())) is not None:
            indices = self.items[found.unit.id]
            if indices:
                self._left[found.unit.id] = set(indices)
                return found, sorted(indices)
            self.scheduler.finish(found.unit.id)  # no selected item runs in it
        return None

    def complete(self, index: int) -> str | None:
        """Item `index` ran; the unit's id when it was the unit's last (its cards are free)."""
        unit_id = self._unit_of_index.get(index)
        if unit_id is None or unit_id not in self._left:
            return None
        self._left[unit_id].discard(index)
        if self._left[unit_id]:
            return None
        del self._left[unit_id]
        failed = unit_id in self._failed and self.scheduler.plan.unit(unit_id).kind is UnitKind.NODE
        self.scheduler.finish(unit_id, ok=not failed)
        return unit_id

    def failed(self, index: int) -> None:
        """Item `index` failed. A node phase with a failed item ends failed: the units that could
        only land on its nodes are blocked (never run; the run's end record lists them). Other
        units end as done: a cell's failure does not stop the cells that wait for it."""
        unit_id = self._unit_of_index.get(index)
        if unit_id is not None:
            self._failed.add(unit_id)

    @property
    def finished(self) -> bool:
        return not self.loose and self.scheduler.finished

    def check_progress(self) -> None:
        """Call after `next_unit()` gave None: raise when nothing runs either (the run would
        wait forever), naming the waiting units."""
        waiting = self.scheduler.stuck()
        if waiting:
            raise PlanError(
                f"no unit can start and none is running; waiting: {', '.join(waiting[:5])}"
                + (f" and {len(waiting) - 5} more" if len(waiting) > 5 else "")
                + "; check the node phases' results (a failed one keeps its nodes unused)"
            )


def _unit_of(plan: WorkPlan, item: tuple[str, Stage] | None) -> str | None:
    """The unit an item runs in. A node stage of a cell that only references a node phase's
    record runs first in the cell's own serving (or calibration) phase, after that phase."""
    if item is None:
        return None
    cell_id, stage = item
    unit = plan.unit_for(cell_id, stage)
    if unit is None or stage not in NODE_STAGES or (cell_id, stage) in unit.items:
        return unit.id if unit else None
    own = plan.of_cell(cell_id, UnitKind.SERVING) or plan.of_cell(cell_id, UnitKind.CALIBRATION)
    return own[0].id if own else unit.id


def assignment_path(run_dir: Path, unit_id: str) -> Path:
    return run_dir / "units" / (unit_id.replace("/", "~") + ".json")


@dataclass(frozen=True)
class Ticket:
    """What a worker reads of the unit it was sent: the unit, its nodes and its item indices."""

    unit: WorkUnit
    nodes: tuple[int, ...]  # scheduler node indices (empty: let Ray choose)
    indices: tuple[int, ...]
    # `cell::stage` -> (node phase, cell whose record it is): items that refer to that record
    references: Mapping[str, tuple[str, str]] = field(default_factory=dict)


def write_assignment(
    run_dir: Path,
    found: Assignment,
    indices: Sequence[int] = (),
    references: Mapping[str, tuple[str, str]] | None = None,
) -> Path:
    """Where the controller puts a unit's nodes, demand and items before sending them."""
    unit = found.unit
    path = assignment_path(run_dir, unit.id)
    path.parent.mkdir(parents=True, exist_ok=True)
    fileio.write_json(path, {
        "unit": unit.id,
        "kind": unit.kind.value,
        "cells": list(unit.cells),
        "nodes": list(found.nodes),
        "demand": {"nodes": unit.demand.nodes, "cards": unit.demand.cards,
                   "whole_nodes": unit.demand.whole_nodes},
        "indices": list(indices),
        "items": [[cell, stage.value] for cell, stage in unit.items],
        "references": {k: list(v) for k, v in (references or {}).items()},
    })
    return path


def read_assignment(run_dir: Path, unit_id: str) -> Ticket | None:
    """The unit as the controller sent it (None: no such file, or not readable)."""
    try:
        data = json.loads(assignment_path(run_dir, unit_id).read_text(encoding="utf-8"))
        demand = data["demand"]
        unit = WorkUnit(
            id=data["unit"],
            kind=UnitKind(data["kind"]),
            cells=tuple(data["cells"]),
            stages=tuple(dict.fromkeys(Stage(s) for _, s in data["items"])),
            demand=Demand(int(demand["nodes"]), int(demand["cards"]), bool(demand["whole_nodes"])),
            items=tuple((c, Stage(s)) for c, s in data["items"]),
        )
        refs = {k: (str(v[0]), str(v[1])) for k, v in data.get("references", {}).items()}
        return Ticket(unit, tuple(int(n) for n in data["nodes"]),
                      tuple(int(i) for i in data["indices"]), refs)
    except (OSError, ValueError, KeyError, TypeError):
        return None
