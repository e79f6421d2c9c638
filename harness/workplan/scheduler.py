"""List scheduling of a work plan onto a cluster's cards.

The scheduler keeps which cards of which node each running unit holds and picks, among the
units whose dependencies are done, the one with the longest remaining chain (critical-path
first, ties: more card-time first) that fits the free cards now. It is the policy only: in a
real run Ray's placement groups hold the cards (leases.py) and the scheduler's node choice is
passed to the lease; in the benchmark `simulate` drives it with a clock.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass

from harness.workplan.figures import UnitRecord
from harness.workplan.units import PlanError
from harness.workplan.units import WorkPlan
from harness.workplan.units import WorkUnit

Durations = Callable[[WorkUnit], float]


@dataclass(frozen=True)
class Assignment:
    """Where a unit runs: node index -> card indices on that node."""

    unit: WorkUnit
    cards: Mapping[int, tuple[int, ...]]

    @property
    def nodes(self) -> tuple[int, ...]:
        return tuple(sorted(self.cards))


class Scheduler:
    """Which unit runs next and on which cards; `finish` frees them and unblocks dependants."""

    def __init__(self, plan: WorkPlan, estimate: Durations | None = None) -> None:
        self.plan = plan
        self._free = {n: set(range(plan.cards_per_node)) for n in range(plan.nodes)}
        self._running: dict[str, Assignment] = {}
        self.done: set[str] = set()
        self.failed: set[str] = set()
        self.blocked: set[str] = set()  # units a failed unit's dependants can no longer run
        self._rank = _chain_lengths(plan, estimate or (lambda u: float(u.demand.total)))
        self._order = sorted(
            (u for u in plan.topological()),
            key=lambda u: (-self._rank[u.id], -u.demand.total, u.id),
        )

    @property
    def running(self) -> dict[str, Assignment]:
        return dict(self._running)

    @property
    def finished(self) -> bool:
        settled = self.done | self.failed | self.blocked
        return len(settled) == len(self.plan.units)

    def runnable(self) -> list[WorkUnit]:
        """Units not started whose dependencies are done, longest chain first."""
        taken = self.done | self.failed | self.blocked | self._running.keys()
        return [u for u in self._order if u.id not in taken and u.after <= self.done]

    def start_next(self) -> Assignment | None:
        """Reserve cards for the first runnable unit that fits now, or None."""
        for unit in self.runnable():
            cards = self._fit(unit)
            if cards is not None:
                for node, held in cards.items():
                    self._free[node] -= set(held)
                found = Assignment(unit, cards)
                self._running[unit.id] = found
                return found
        return None

    def finish(self, unit_id: str, ok: bool = True) -> None:
        """Free the unit's cards; a failed unit blocks every unit that waits for it."""
        held = self._running.pop(unit_id)
        for node, cards in held.cards.items():
            self._free[node] |= set(cards)
        if ok:
            self.done.add(unit_id)
            return
        self.failed.add(unit_id)
        grew = True
        while grew:
            lost = self.failed | self.blocked
            more = {u.id for u in self.plan.units if u.after & lost and u.id not in lost}
            grew = bool(more)
            self.blocked |= more

    def _fit(self, unit: WorkUnit) -> dict[int, tuple[int, ...]] | None:
        d = unit.demand
        if d.whole_nodes:
            return self._whole(unit)
        # best fit: the node with the fewest free cards that still holds the unit, so whole
        # nodes stay free for multi-node units
        fits = [n for n, free in self._free.items() if len(free) >= d.cards]
        if not fits:
            return None
        node = min(fits, key=lambda n: (len(self._free[n]), n))
        return {node: tuple(sorted(self._free[node])[: d.cards])}

    def _whole(self, unit: WorkUnit) -> dict[int, tuple[int, ...]] | None:
        full = self.plan.cards_per_node
        idle = [n for n, free in self._free.items() if len(free) == full]
        k = unit.demand.nodes
        if unit.demand.pinned:
            sets = [unit.demand.pinned]
        else:  # an aligned node set, as node phases measured them
            sets = [tuple(range(f, f + k)) for f in range(0, self.plan.nodes - k + 1, k)]
        for nodes in sets:
            if all(n in idle for n in nodes):
                return {n: tuple(range(full)) for n in nodes}
        return None


def _chain_lengths(plan: WorkPlan, estimate: Durations) -> dict[str, float]:
    """Each unit's own estimate plus the longest chain of units that wait for it."""
    after_me: dict[str, list[str]] = {u.id: [] for u in plan.units}
    for u in plan.units:
        for dep in u.after:
            after_me[dep].append(u.id)
    length: dict[str, float] = {}
    for u in reversed(plan.topological()):
        length[u.id] = estimate(u) + max((length[v] for v in after_me[u.id]), default=0.0)
    return length


def longest_chain(plan: WorkPlan, duration: Durations) -> float:
    """The critical path: no schedule finishes before it."""
    return max(_chain_lengths(plan, duration).values(), default=0.0)


def simulate(plan: WorkPlan, duration: Durations) -> list[UnitRecord]:
    """Run the plan on a simulated clock: start what fits, advance to the next end, repeat."""
    sched = Scheduler(plan, duration)
    clock = 0.0
    ends: dict[str, float] = {}
    starts: dict[str, tuple[float, Assignment]] = {}
    records: list[UnitRecord] = []
    while not sched.finished:
        while (a := sched.start_next()) is not None:
            starts[a.unit.id] = (clock, a)
            ends[a.unit.id] = clock + duration(a.unit)
        if not ends:
            left = [u.id for u in sched.runnable()]
            raise PlanError(f"nothing can start on the cluster; waiting: {left}")
        unit_id = min(ends, key=lambda k: (ends[k], k))
        clock = ends.pop(unit_id)
        start, a = starts[unit_id]
        sched.finish(unit_id)
        cards = tuple((n, c) for n, held in sorted(a.cards.items()) for c in held)
        records.append(UnitRecord(unit_id, start, clock, cards, a.unit.kind.value))
    return records
