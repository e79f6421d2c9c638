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
    """Which unit runs next and on which cards; `finish` frees them and unblocks dependants.

    Priority ("chain", the default): the longest remaining chain first, then more card-time;
    ("wide"): widest demand first, then the chain. On the shipped matrices "chain" is as good
    or better (deepseek-r1-multinode on 4 nodes: 1.11-1.13x the lower bound against 1.26x;
    benchmarks/bench_scheduling.py --priority). When the first unit in that order does not
    fit, it reserves the cards that free earliest by the estimates (EASY
    backfilling): later units may use them only if they are estimated to end before then, so
    a multi-node unit is never starved by a stream of one-card units.
    """

    def __init__(
        self,
        plan: WorkPlan,
        estimate: Durations | None = None,
        priority: str = "chain",
        slack: float = 0.0,
    ) -> None:
        self.plan = plan
        self.estimate = estimate or (lambda u: float(u.demand.total))
        # relaxed backfilling: a later unit may delay the first blocked one by this fraction of
        # the blocked unit's own estimate (0: EASY, never delayed). Real runs have rough
        # estimates, and two units that end a few seconds apart should still share the cards
        self.slack = slack
        self._free = {n: set(range(plan.cards_per_node)) for n in range(plan.nodes)}
        self._running: dict[str, Assignment] = {}
        self._ends: dict[str, float] = {}  # estimated end of each running unit
        self.done: set[str] = set()
        self.failed: set[str] = set()
        self.blocked: set[str] = set()  # units a failed unit's dependants can no longer run
        chain = _chain_lengths(plan, self.estimate)
        if priority not in PRIORITIES:
            raise ValueError(f"priority {priority!r}: one of {', '.join(PRIORITIES)}")

        def rank(u: WorkUnit) -> tuple[float, ...]:
            wide = -u.demand.nodes if priority == "wide" else 0
            return (wide, -chain[u.id], -u.demand.total)

        self._order = sorted(plan.topological(), key=lambda u: (*rank(u), u.id))

    @property
    def running(self) -> dict[str, Assignment]:
        return dict(self._running)

    @property
    def started(self) -> set[str]:
        """Units that have started (running or settled): an `after_start` is then met."""
        return self.done | self.failed | self._running.keys()

    @property
    def finished(self) -> bool:
        settled = self.done | self.failed | self.blocked
        return len(settled) == len(self.plan.units)

    def runnable(self) -> list[WorkUnit]:
        """Units not started whose dependencies are done, in priority order."""
        taken = self.done | self.failed | self.blocked | self._running.keys()
        return [
            u
            for u in self._order
            if u.id not in taken
            and u.after <= self.done
            and u.after_start <= self.started
            and (not u.lands_on or any(p in self.done for p in u.lands_on))
        ]

    def start_next(self, now: float = 0.0) -> Assignment | None:
        """Reserve cards for the first runnable unit that may start now, or None."""
        reserved: dict[int, int] = {}  # node -> cards held back for the first blocked unit
        until = float("inf")
        for unit in self.runnable():
            cards = self._fit(unit, reserved, now + self.estimate(unit) <= until)
            if cards is not None:
                for node, held in cards.items():
                    self._free[node] -= set(held)
                found = Assignment(unit, cards)
                self._running[unit.id] = found
                self._ends[unit.id] = now + self.estimate(unit)
                return found
            if until == float("inf"):
                reserved, until = self._reservation(unit, now)
                until += self.slack * self.estimate(unit)
        return None

    def finish(self, unit_id: str, ok: bool = True) -> None:
        """Free the unit's cards; a failed unit blocks every unit that waits for it."""
        held = self._running.pop(unit_id)
        self._ends.pop(unit_id)
        for node, cards in held.cards.items():
            self._free[node] |= set(cards)
        if ok:
            self.done.add(unit_id)
            return
        self.failed.add(unit_id)
        grew = True
        while grew:
            lost = self.failed | self.blocked
            more = {
                u.id
                for u in self.plan.units
                if u.id not in lost and (u.after & lost or not self._can_land(u, lost))
            }
            grew = bool(more)
            self.blocked |= more

    def stuck(self) -> list[str]:
        """Units waiting while nothing runs and nothing can start (a deadlock to report)."""
        if self._running or self.finished:
            return []
        return sorted(u.id for u in self.plan.units if u.id not in self.started | self.blocked)

    def _can_land(self, unit: WorkUnit, lost: set[str]) -> bool:
        """Whether the node phases not lost can still check a node set the unit fits."""
        if not unit.lands_on:
            return True
        left = {n for p in unit.lands_on if p not in lost for n in self.plan.unit(p).demand.pinned}
        if not unit.demand.whole_nodes:
            return bool(left)
        return any(set(nodes) <= left for nodes in self._sets(unit))

    def checked(self, unit: WorkUnit) -> set[int]:
        """Nodes the unit may land on: those a passed node phase of its `lands_on` covers."""
        if not unit.lands_on:
            return set(self._free)
        return {n for p in unit.lands_on if p in self.done for n in self.plan.unit(p).demand.pinned}

    def _spare(self, node: int, reserved: dict[int, int], early: bool) -> int:
        """Free cards of `node` a unit may take: all if it ends before the reservation."""
        free = len(self._free[node])
        return free if early else free - reserved.get(node, 0)

    def _fit(
        self, unit: WorkUnit, reserved: dict[int, int], early: bool
    ) -> dict[int, tuple[int, ...]] | None:
        d, full = unit.demand, self.plan.cards_per_node
        checked = self.checked(unit)
        if d.whole_nodes:
            for nodes in self._sets(unit):
                if all(n in checked and self._spare(n, reserved, early) == full for n in nodes):
                    return {n: tuple(range(full)) for n in nodes}
            return None
        # best fit: the node with the fewest spare cards that still holds the unit, so whole
        # nodes stay free for multi-node units
        fits = [n for n in checked if self._spare(n, reserved, early) >= d.cards]
        if not fits:
            return None
        node = min(fits, key=lambda n: (self._spare(n, reserved, early), n))
        return {node: tuple(sorted(self._free[node])[: d.cards])}

    def _sets(self, unit: WorkUnit) -> list[tuple[int, ...]]:
        """Node sets a whole-node unit may take: its pinned set, or an aligned one (the sets
        node phases measured)."""
        if unit.demand.pinned:
            return [unit.demand.pinned]
        k = unit.demand.nodes
        return [tuple(range(f, f + k)) for f in range(0, self.plan.nodes - k + 1, k)]

    def _free_at(self, node: int, cards: int, now: float) -> float:
        """When `node` has `cards` free by the running units' estimated ends."""
        free = len(self._free[node])
        ends = sorted(
            (self._ends[uid], len(a.cards.get(node, ())))
            for uid, a in self._running.items()
            if node in a.cards
        )
        t = now
        for end, held in ends:
            if free >= cards:
                break
            t, free = max(t, end), free + held
        return t

    def _reservation(self, unit: WorkUnit, now: float) -> tuple[dict[int, int], float]:
        """The cards that free earliest for `unit`, and when (a node not yet checked frees
        when the node phase running on it ends; one no phase is running on, never)."""
        d, checked = unit.demand, self.checked(unit)
        checking = {
            n for uid in unit.lands_on if uid in self._running for n in self._running[uid].cards
        }
        sets = self._sets(unit) if d.whole_nodes else [(n,) for n in sorted(self._free)]

        def when(nodes: tuple[int, ...]) -> float:
            if not set(nodes) <= checked | checking:
                return float("inf")
            return max(self._free_at(n, d.cards, now) for n in nodes)

        best = min(sets, key=when)
        return {n: d.cards for n in best}, when(best)


PRIORITIES = ("wide", "chain")


def _chain_lengths(plan: WorkPlan, estimate: Durations) -> dict[str, float]:
    """Each unit's own estimate plus the longest chain of units that wait for it."""
    after_me: dict[str, list[str]] = {u.id: [] for u in plan.units}
    started_by_me: dict[str, list[str]] = {u.id: [] for u in plan.units}
    for u in plan.units:  # a "lands on one of" counts as a dependency: node phases of one
        for dep in u.after | set(u.lands_on):  # size take the same time, so the chain agrees
            after_me[dep].append(u.id)
        for dep in u.after_start:  # may start with it: its chain, not after its duration
            started_by_me[dep].append(u.id)
    length: dict[str, float] = {}
    for u in reversed(plan.topological()):
        own = estimate(u) + max((length[v] for v in after_me[u.id]), default=0.0)
        length[u.id] = max([own, *(length[v] for v in started_by_me[u.id])])
    return length


def longest_chain(plan: WorkPlan, duration: Durations) -> float:
    """The critical path: no schedule finishes before it."""
    return max(_chain_lengths(plan, duration).values(), default=0.0)


def simulate(
    plan: WorkPlan, duration: Durations, priority: str = "chain", slack: float = 0.0
) -> list[UnitRecord]:
    """Run the plan on a simulated clock: start what fits, advance to the next end, repeat.
    The scheduler's estimates are the true durations here (a real run has only estimates)."""
    sched = Scheduler(plan, duration, priority, slack)
    clock = 0.0
    ends: dict[str, float] = {}
    starts: dict[str, tuple[float, Assignment]] = {}
    records: list[UnitRecord] = []
    while not sched.finished:
        while (a := sched.start_next(clock)) is not None:
            starts[a.unit.id] = (clock, a)
            ends[a.unit.id] = clock + duration(a.unit)
        if not ends:
            left = [u.id for u in sched.runnable()]
            raise PlanError(f"nothing can start on the cluster; waiting: {left}")
        clock = min(ends.values())
        for unit_id in sorted(k for k, end in ends.items() if end == clock):
            del ends[unit_id]
            start, a = starts[unit_id]
            sched.finish(unit_id)
            cards = tuple((n, c) for n, held in sorted(a.cards.items()) for c in held)
            records.append(UnitRecord(unit_id, start, clock, cards, a.unit.kind.value))
    return records
