"""Work units: what runs together on which cards, and what must finish before it.

A unit is a phase of the run that holds cards for its whole duration: a node phase (preflight
and collectives of one node set, on whole nodes and alone there, because a bandwidth test must
not share the cards with a loading server), one calibration per calibration key (calibrate
once, derive many), and a cell's serving phase (serving, accuracy and throughput share one
server, so they hold the same cards).
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field
from enum import StrEnum

from harness.cell import Stage
from harness.errors import HarnessError

NODE_STAGES = (Stage.PREFLIGHT, Stage.COLLECTIVES)
SERVING_STAGES = (Stage.SERVING, Stage.ACCURACY, Stage.THROUGHPUT)


class UnitKind(StrEnum):
    NODE = "node"
    CALIBRATION = "calibration"
    SERVING = "serving"


class PlanError(HarnessError):
    """The selected cells cannot be planned onto the cluster; the message names the cell."""


@dataclass(frozen=True)
class Demand:
    """Cards a unit holds: `cards` on each of `nodes` nodes (whole nodes when `nodes` > 1)."""

    nodes: int
    cards: int  # per node
    whole_nodes: bool = False
    pinned: tuple[int, ...] = ()  # node indices a node phase must run on (its node set)

    @property
    def total(self) -> int:
        return self.nodes * self.cards


@dataclass(frozen=True)
class WorkUnit:
    """One schedulable phase: its id, kind, cells, stages, card demand and dependencies."""

    id: str
    kind: UnitKind
    cells: tuple[str, ...]  # ids of the cells whose stages it runs (or which reference it)
    stages: tuple[Stage, ...]
    demand: Demand
    after: frozenset[str] = field(default_factory=frozenset)  # ids of units that finish first
    # node phases that check the nodes it may run on: it lands only on nodes a passed one of
    # them covers (which node set is the scheduler's choice, so this is "one of", not "all")
    lands_on: tuple[str, ...] = ()
    # units that must have started (not finished): an FP8 cell beside its BF16 twin, its
    # accuracy gate waiting in the store for the twin's result (workplan/twins.py)
    after_start: frozenset[str] = field(default_factory=frozenset)
    # the (cell id, stage) suite items the unit runs; a node phase runs its stages once, for
    # its first cell, and the other cells on those nodes reference that record
    items: tuple[tuple[str, Stage], ...] = ()

    @property
    def waits_for(self) -> frozenset[str]:
        """Every unit that comes before it in any sense (finish, land on, start)."""
        return self.after | self.after_start | frozenset(self.lands_on)

    def describe(self) -> str:
        d = self.demand
        where = f"{d.nodes} whole node(s)" if d.whole_nodes else f"{d.cards} card(s) on 1 node"
        return f"{self.id} ({'+'.join(s.value for s in self.stages)}; {where})"


@dataclass(frozen=True)
class WorkPlan:
    """The units of a run, as a DAG (every `after` names a unit of the plan)."""

    units: tuple[WorkUnit, ...]
    nodes: int
    cards_per_node: int
    notes: tuple[str, ...] = ()  # how the plan orders what the DAG alone does not say

    def __post_init__(self) -> None:
        ids = {u.id for u in self.units}
        for u in self.units:
            missing = (u.after | u.after_start | set(u.lands_on)) - ids
            if missing:
                raise PlanError(f"unit {u.id} waits for {sorted(missing)}, not in the plan")

    def unit_for(self, cell_id: str, stage: Stage) -> WorkUnit | None:
        """The unit that runs suite item (cell, stage), or for a node stage of a cell that only
        references a node phase's record, the first node phase of its size that covers it."""
        for u in self.units:
            if (cell_id, stage) in u.items:
                return u
        for u in self.units:
            if u.kind is UnitKind.NODE and cell_id in u.cells and stage in u.stages:
                return u
        return None

    def unit(self, unit_id: str) -> WorkUnit:
        for u in self.units:
            if u.id == unit_id:
                return u
        raise KeyError(unit_id)

    def of_cell(self, cell_id: str, kind: UnitKind) -> list[WorkUnit]:
        """The units of `kind` a cell's stages run in (node phases: every set it may land on)."""
        return [u for u in self.units if u.kind is kind and cell_id in u.cells]

    def topological(self) -> list[WorkUnit]:
        """Units with every unit after the ones it waits for or lands after; a cycle is a
        PlanError."""
        done: dict[str, WorkUnit] = {}
        pending = list(self.units)
        while pending:
            ready = [u for u in pending if u.waits_for <= done.keys()]
            if not ready:
                raise PlanError(f"the plan has a cycle among {[u.id for u in pending]}")
            for u in ready:
                done[u.id] = u
            pending = [u for u in pending if u.id not in done]
        return list(done.values())
