"""`harness units`: what a `pytest -n` run would do on a cluster, before it runs.

The plan's units (kind, cards, what each waits for) and their order on a simulated clock with
the dispatcher's priors (dispatch.PRIOR_STAGE_S: rough, per unit kind, not a cost model of the
hardware), so a validation engineer sees which cells share a node and which wait, and a cell
that cannot fit the cluster is refused naming it, as the run would refuse it.
"""

from __future__ import annotations

from typing import Any

from harness.workplan.dispatch import RELAXED_SLACK
from harness.workplan.dispatch import prior_estimate
from harness.workplan.figures import run_figures
from harness.workplan.scheduler import simulate
from harness.workplan.units import WorkPlan


def units_report(plan: WorkPlan) -> dict[str, Any]:
    """The plan and its simulated order, as data (`--json`) and for `render`."""
    records = sorted(simulate(plan, prior_estimate, slack=RELAXED_SLACK), key=lambda r: r.start)
    figures = run_figures(records, plan.nodes * plan.cards_per_node)
    order = {r.unit: r for r in records}
    return {
        "nodes": plan.nodes,
        "cards_per_node": plan.cards_per_node,
        "notes": list(plan.notes),
        "units": [
            {
                "unit": u.id,
                "kind": u.kind.value,
                "nodes": u.demand.nodes,
                "cards_per_node": u.demand.cards,
                "whole_nodes": u.demand.whole_nodes,
                "after": sorted(u.after),
                "after_start": sorted(u.after_start),
                "lands_on_one_of": list(u.lands_on),
                "stages": [s.value for s in u.stages],
                "start_s": order[u.id].start if u.id in order else None,
                "end_s": order[u.id].end if u.id in order else None,
                "cards": [list(c) for c in order[u.id].cards] if u.id in order else [],
            }
            for u in sorted(plan.units, key=lambda u: order[u.id].start if u.id in order else 0)
        ],
        "estimate": {
            "makespan_s": figures.makespan_s,
            "unit_seconds": figures.unit_seconds,
            "utilisation": figures.utilisation,
        },
    }


def render(report: dict[str, Any]) -> str:
    """The report as text: one line a unit in simulated order, then the estimate."""
    lines = [f"{len(report['units'])} units on {report['nodes']} node(s) x "
             f"{report['cards_per_node']} card(s), in the order a run would start them:"]
    for u in report["units"]:
        where = (f"{u['nodes']} whole node(s)" if u["whole_nodes"]
                 else f"{u['cards_per_node']} card(s)")
        waits = [*u["after"], *(f"{a} (started)" for a in u["after_start"])]
        cards = " ".join(f"{n}:{c}" for n, c in u["cards"])
        lines.append(f"  +{u['start_s']:6.0f} s  {u['unit']}  [{'+'.join(u['stages'])}; {where}"
                     f"; cards {cards}]" + (f"  after {', '.join(waits)}" if waits else ""))
    est = report["estimate"]
    lines += [f"estimate with the priors per unit kind (not measured): makespan "
              f"{est['makespan_s']:.0f} s, sum of unit times {est['unit_seconds']:.0f} s, "
              f"utilisation {100 * est['utilisation']:.0f}%", *report["notes"]]
    return "\n".join(lines)
