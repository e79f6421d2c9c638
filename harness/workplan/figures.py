"""Figures of a run from its unit records: makespan, sum of unit times, utilisation.

Pure functions, so the report computes them from recorded start/end/cards of a real run and
the benchmark from a simulated one alike.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class UnitRecord:
    """One unit as it ran: when, and on which (node, card) pairs."""

    unit: str
    start: float  # seconds (any common origin: epoch or the run's start)
    end: float
    cards: tuple[tuple[int | str, int], ...]
    kind: str = ""
    ran_on: str = ""  # the Ray node ("ip/node-id") its commands started on; "": the harness's

    @property
    def seconds(self) -> float:
        return self.end - self.start

    def as_dict(self) -> dict[str, Any]:
        """A `kind: unit` line for results.jsonl (the report reads the figures back from it)."""
        return {
            "kind": "unit",
            "unit": self.unit,
            "unit_kind": self.kind,
            "start": self.start,
            "end": self.end,
            "cards": [list(c) for c in self.cards],
            **({"ran_on": self.ran_on} if self.ran_on else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UnitRecord:
        cards = tuple((n, int(c)) for n, c in data.get("cards", []))
        return cls(
            data["unit"], float(data["start"]), float(data["end"]), cards,
            data.get("unit_kind", ""), str(data.get("ran_on", "")),
        )


@dataclass(frozen=True)
class RunFigures:
    makespan_s: float  # first start to last end
    unit_seconds: float  # sum of unit times (what a one-at-a-time run would take)
    busy_card_seconds: float
    available_card_seconds: float  # cards x makespan

    @property
    def utilisation(self) -> float:
        """Card-seconds busy / card-seconds available; 0 for an empty run."""
        if self.available_card_seconds <= 0:
            return 0.0
        return self.busy_card_seconds / self.available_card_seconds

    def render(self) -> str:
        return (
            f"makespan {self.makespan_s / 3600:.2f} h, sum of unit times "
            f"{self.unit_seconds / 3600:.2f} h, utilisation {100 * self.utilisation:.0f}%"
        )


def run_figures(records: Sequence[UnitRecord], total_cards: int) -> RunFigures:
    """The figures of `records` on a cluster of `total_cards` cards."""
    if not records:
        return RunFigures(0.0, 0.0, 0.0, 0.0)
    makespan = max(r.end for r in records) - min(r.start for r in records)
    busy = sum(r.seconds * len(r.cards) for r in records)
    return RunFigures(
        makespan_s=makespan,
        unit_seconds=sum(r.seconds for r in records),
        busy_card_seconds=busy,
        available_card_seconds=total_cards * makespan,
    )


def overlaps(records: Sequence[UnitRecord]) -> list[tuple[str, str, tuple[int | str, int]]]:
    """Pairs of units that held the same card at the same time (must be none)."""
    found = []
    ordered = sorted(records, key=lambda r: r.start)
    for i, a in enumerate(ordered):
        for b in ordered[i + 1 :]:
            if b.start >= a.end:
                break
            shared = set(a.cards) & set(b.cards)
            found += [(a.unit, b.unit, c) for c in sorted(shared, key=str)]
    return found


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds:.0f} s"


@dataclass(frozen=True)
class UnitsTable:
    """A `pytest -n` run's units as report.md, summary.md and report.html show them."""

    headline: str
    header: tuple[str, ...]
    rows: list[list[str]]
    clashes: list[str]  # cards held by two units at once (must be none)


def units_table(records: Iterable[Mapping[str, Any]]) -> UnitsTable | None:
    """The figures and one row a unit, from results.jsonl's `unit` and `cluster` lines (None:
    a run without units)."""
    units: list[UnitRecord] = []
    cluster: Mapping[str, Any] = {}
    for rec in records:
        if rec.get("kind") == "unit":
            units.append(UnitRecord.from_dict(rec))
        elif rec.get("kind") == "cluster":
            cluster = rec
    if not units:
        return None
    nodes, per_node = int(cluster.get("nodes", 0)), int(cluster.get("cards_per_node", 0))
    figures = run_figures(units, nodes * per_node)
    origin = min(u.start for u in units)
    headline = (
        f"{len(units)} units on {nodes} node(s) x {per_node} {cluster.get('resource', 'card')}"
        f": makespan {_duration(figures.makespan_s)}, sum of unit times "
        f"{_duration(figures.unit_seconds)}, utilisation {100 * figures.utilisation:.0f}% "
        "(card-seconds busy / card-seconds available)"
    )
    rows = [
        [u.unit, u.kind, f"+{u.start - origin:.0f} s", f"{u.seconds:.0f} s",
         " ".join(f"{n}:{c}" for n, c in u.cards) or "-", u.ran_on or "harness host"]
        for u in sorted(units, key=lambda u: u.start)
    ]
    clashes = [f"{a} and {b} on {c}" for a, b, c in overlaps(units)]
    header = ("unit", "kind", "start", "time", "cards (node:card)", "commands ran on")
    return UnitsTable(headline, header, rows, clashes)


def units_section(records: Iterable[Mapping[str, Any]]) -> list[str]:
    """The units as Markdown lines for summary.md and report.md (none: a run without `-n`)."""
    table = units_table(records)
    if table is None:
        return []
    lines = ["## Work units (cells in parallel)", "", table.headline, "",
             "| " + " | ".join(table.header) + " |", "|" + "---|" * len(table.header)]
    lines += ["| " + " | ".join(row) + " |" for row in table.rows]
    if table.clashes:
        lines += ["", "**Cards held by two units at once:** " + "; ".join(table.clashes)]
    return lines
