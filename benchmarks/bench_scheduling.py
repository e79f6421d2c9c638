"""Scheduling benchmark: the shipped Gaudi matrices planned onto 1, 2 and 4 Gaudi2 nodes.

Not a test: figures only, whatever they are. For each matrix and cluster it prints the
makespan of the list schedule (harness.workplan.scheduler.simulate), the serial time (sum of
unit times: one unit at a time), "today" (one cell after another, preflight and collectives
repeated for every cell, each calibration once), the lower bound max(longest dependency
chain, card-time / cards), the ratio makespan / bound (goal <= 1.25) and the utilisation. A
matrix whose cell cannot fit the cluster prints the plan error naming it, then the figures
without that cell.

Cost model (seconds; Gaudi2, 8 cards per node; P = parameters in billions, MoE: active ones
x 1.5 for the routing; r = ranks of the unit):
  node phase     preflight 60 + collectives 180, + 60 per extra node of the set
  calibration    load 2 P + warm-up 300 + measure samples x P_total x 0.02 / r
                 + quantize 0.5 P
  serving phase  start 300 + 2 P_total (load and graph warm-up)
                 + its calibration stage: 5 (cache hit) + 60 when unify/expand derive a set
                 + accuracy: ceil(problems / batch) x max(256, max_gen_toks / 4) x TPOT
                   (gsm8k: 1319 problems, or accuracy.limit)
                 + throughput: per concurrency c, prompts (num_prompts or 4c) / c x
                   output_len x TPOT x (1 + c / 64)
                 + an FP8 cell beside its BF16 twin: the time its accuracy gate waits for the
                   twin's accuracy, taking both to start together (the plan lets them)
  TPOT           0.008 + 0.0016 x P / r  (fp8 x 0.7)

    .venv/bin/python benchmarks/bench_scheduling.py [--nodes 1 2 4]
"""

from __future__ import annotations

import argparse
import math
import re

from harness.calibration.planner import derivation
from harness.cell import Cell
from harness.cell import Stage
from harness.cell import bf16_twin_id
from harness.devices import device
from harness.matrix import load_matrix
from harness.workplan.figures import run_figures
from harness.workplan.plan import build_plan
from harness.workplan.scheduler import PRIORITIES
from harness.workplan.scheduler import longest_chain
from harness.workplan.scheduler import simulate
from harness.workplan.units import PlanError
from harness.workplan.units import UnitKind
from harness.workplan.units import WorkPlan
from harness.workplan.units import WorkUnit

MATRICES = ("nightly-g2", "nightly-g3", "deepseek-r1-multinode")
PARAMS_B = {"llama-3.1-8b": 8.0, "llama-3.1-405b": 405.0, "deepseek-r1-0528": 671.0}
ACTIVE_B = {"deepseek-r1-0528": 37.0}
GSM8K = 1319


def params(cell: Cell) -> tuple[float, float]:
    """(total, effective-per-token) parameters in billions."""
    name = cell.model.name
    total = PARAMS_B.get(name)
    if total is None:
        found = re.search(r"(\d+(?:\.\d+)?)b", name)
        total = float(found.group(1)) if found else 7.0
    return total, ACTIVE_B[name] * 1.5 if name in ACTIVE_B else total


def tpot(cell: Cell, ranks: int) -> float:
    return (0.008 + 0.0016 * params(cell)[1] / ranks) * (0.7 if cell.is_fp8 else 1.0)


def until_accuracy_s(cell: Cell, stages: tuple[Stage, ...]) -> float:
    """Server start, the cell's calibration stage and accuracy (the first part of its phase)."""
    total, _ = params(cell)
    t = 0.0
    if Stage.SERVING in stages:
        t += 300 + 2 * total
    if Stage.CALIBRATION in stages:
        t += 5 + (60 if derivation(cell) is not None else 0)
    if Stage.ACCURACY in stages:
        a = cell.settings.accuracy
        problems = a.limit or GSM8K
        toks = max(256, a.max_gen_toks / 4)
        t += math.ceil(problems / a.batch_size) * toks * tpot(cell, cell.world_size)
    return t


class CostModel:
    """Unit durations from the model above (the cells are looked up by id)."""

    def __init__(self, cells: list[Cell]) -> None:
        self.cells = {c.id: c for c in cells}

    def __call__(self, unit: WorkUnit) -> float:
        first = self.cells[unit.cells[0]]
        if unit.kind is UnitKind.NODE:
            return 240.0 + 60.0 * (unit.demand.nodes - 1)
        if unit.kind is UnitKind.CALIBRATION:
            total, _ = params(first)
            s = first.settings.calibration
            measure = s.samples * total * 0.02 / unit.demand.total
            return 2 * total + 300 + measure + 0.5 * total
        return self.serving(first, unit)

    def serving(self, cell: Cell, unit: WorkUnit) -> float:
        t = until_accuracy_s(cell, unit.stages)
        twin = self.cells.get(bf16_twin_id(cell.id))
        if cell.is_fp8 and twin is not None and Stage.ACCURACY in unit.stages:
            t = max(t, until_accuracy_s(twin, twin.stages))
        r = cell.world_size
        if Stage.THROUGHPUT in unit.stages:
            b = cell.settings.throughput
            for c in b.concurrencies:
                prompts = b.num_prompts or 4 * c
                t += prompts / c * b.output_len * tpot(cell, r) * (1 + c / 64)
        return t


def lower_bound(plan: WorkPlan, cost: CostModel) -> tuple[float, float]:
    """(longest chain, card-time / cards)."""
    card_time = sum(cost(u) * u.demand.total for u in plan.units)
    return longest_chain(plan, cost), card_time / (plan.nodes * plan.cards_per_node)


def report(
    name: str,
    cells: list[Cell],
    nodes: int,
    dropped: list[str],
    slack: float = 0.0,
    priority: str = "chain",
) -> None:
    cpn = device("g2").cards_per_node  # the simulated cluster is Gaudi2 nodes
    plan = build_plan(cells, nodes, cpn)
    cost = CostModel(cells)
    records = simulate(plan, cost, priority, slack)
    figs = run_figures(records, nodes * cpn)
    chain, area = lower_bound(plan, cost)
    today = sum(cost(u) for u in plan.units if u.kind is not UnitKind.NODE)
    first_phase = {u.demand.nodes: u for u in reversed(plan.units) if u.kind is UnitKind.NODE}
    today += sum(cost(first_phase[c.nodes]) for c in cells if c.nodes in first_phase)
    bound = max(chain, area)
    ratio = figs.makespan_s / bound if bound else 0.0
    print(
        f"{name:22s} {nodes} node(s) {len(cells):2d} cells {len(plan.units):2d} units | "
        f"makespan {figs.makespan_s / 3600:5.2f} h  serial {figs.unit_seconds / 3600:5.2f} h  "
        f"today {today / 3600:5.2f} h  "
        f"bound {bound / 3600:5.2f} h (chain {chain / 3600:.2f}, card-time/cards "
        f"{area / 3600:.2f})  ratio {ratio:4.2f}{'' if ratio <= 1.25 else ' (> 1.25)'}  "
        f"util {100 * figs.utilisation:3.0f}%"
    )
    for cell_id in dropped:
        print(f"{'':22s}   left out (does not fit {nodes} node(s)): {cell_id}")


def fitting(cells: list[Cell], nodes: int) -> tuple[list[Cell], list[str]]:
    """The cells that plan onto `nodes` nodes, and the plan errors of those that do not."""
    keep, errors = [], []
    for cell in cells:
        try:
            build_plan([cell], nodes, device(cell.device).cards_per_node)
        except PlanError as exc:
            errors.append(str(exc))
            continue
        keep.append(cell)
    return keep, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument(
        "--slack", type=float, default=0.0,
        help="relaxed backfilling: how far (a fraction of its estimate) a backfilled unit may "
        "delay the first blocked one; 0 is EASY, a real run's dispatcher uses 0.25",
    )
    parser.add_argument("--priority", choices=PRIORITIES, default="chain")
    args = parser.parse_args()
    print(f"priority {args.priority}, backfilling slack {args.slack:g}")
    for name in MATRICES:
        cells = load_matrix(name).cells
        for nodes in args.nodes:
            try:
                build_plan(cells, nodes, 8)
                report(name, cells, nodes, [], args.slack, args.priority)
            except PlanError as exc:
                keep, errors = fitting(cells, nodes)
                print(f"{name:22s} {nodes} node(s): plan error: {exc}")
                if keep:
                    report(
                        name, keep, nodes, [e.split(":")[0] for e in errors], args.slack,
                        args.priority,
                    )


if __name__ == "__main__":
    main()
