"""Build the work plan of a run from its selected cells and stages.

Node phases come first on their node sets, a calibration before the cells that derive from
its key, and an FP8 cell's serving phase after its BF16 twin's (the FP8 accuracy gate reads
the twin's accuracy from the run's store, harness/references.py). A cell that cannot fit the
cluster is a PlanError naming it, before anything runs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from collections.abc import Collection
from collections.abc import Sequence
from dataclasses import replace

from harness.calibration.planner import calibrate_layout
from harness.cell import Cell
from harness.cell import Stage
from harness.cell import bf16_twin_id
from harness.devices import nodes_for
from harness.devices import ranks
from harness.workplan.units import NODE_STAGES
from harness.workplan.units import SERVING_STAGES
from harness.workplan.units import Demand
from harness.workplan.units import PlanError
from harness.workplan.units import UnitKind
from harness.workplan.units import WorkPlan
from harness.workplan.units import WorkUnit

KeyFunction = Callable[[Cell], str]
TWIN_NOTES = {
    "start": "an FP8 cell's serving phase starts once its BF16 twin's has started (so the twin "
    "is sure to finish); its accuracy gate waits for the twin's accuracy in the run's store "
    "(workplan.twins.TwinWaitingReferences)",
    "finish": "an FP8 cell's serving phase waits for its BF16 twin's serving phase to finish: "
    "the FP8 accuracy gate is judged against the twin's accuracy, read from the run's store",
}


# the calibration settings that change the measurement (not how a cell derives its set)
_MEASURED = {
    "dataset",
    "samples",
    "postprocess",
    "scale_method",
    "target_device",
    "max_seq_len",
    "output_dir",
}


def plain_key(cell: Cell) -> str:
    """A calibration key from the cell alone (model, device, the layout measured, settings).

    The session should pass the real key (calibration.service.plan(...).key.digest, which also
    fingerprints weights and dataset); this one groups the same cells for planning offline."""
    tp, ep = calibrate_layout(cell)
    measured = cell.settings.calibration.model_dump(mode="json", include=_MEASURED)
    blob = json.dumps([cell.model.source, cell.device, tp, ep, measured], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_plan(
    cells: Sequence[Cell],
    nodes: int,
    cards_per_node: int,
    stages: Collection[Stage] | None = None,
    calibration_key: KeyFunction = plain_key,
    calibrated: Collection[str] = (),
    twin_order: str = "start",
) -> WorkPlan:
    """The units of `cells` (restricted to `stages`) on `nodes` nodes of `cards_per_node`.

    `calibrated`: keys whose calibration is already cached: no calibration unit is planned.
    `twin_order`: "start" (an FP8 cell runs beside its BF16 twin, its gate waits for the
    twin's record) or "finish" (it runs after the twin)."""
    if twin_order not in TWIN_NOTES:
        raise PlanError(f"twin_order {twin_order!r}: one of {', '.join(TWIN_NOTES)}")
    if nodes < 1 or cards_per_node < 1:
        raise PlanError(f"a cluster of {nodes} node(s) x {cards_per_node} card(s) has no cards")
    chosen = {c.id: _stages(c, stages) for c in cells}
    units: list[WorkUnit] = []
    node_units = _node_phases(cells, chosen, nodes, cards_per_node)
    units += [u for group in node_units.values() for u in group]
    cal_of = _calibrations(cells, chosen, nodes, cards_per_node, calibration_key, calibrated)
    every_phase = tuple(u.id for u in units)
    units += [replace(u, lands_on=every_phase) for u in dict.fromkeys(cal_of.values())]
    serving_ids = {c.id: _serving_id(c) for c in cells if _serving_stages(c, chosen, cal_of)}
    for cell in cells:
        its = _serving_stages(cell, chosen, cal_of)
        if not its:
            continue
        demand = _demand(
            cell,
            max(cell.nodes, nodes_for(cell.world_size, cards_per_node)),
            cards_per_node,
            nodes,
            "serving",
        )
        after: set[str] = set()
        after_start: set[str] = set()
        if cell.id in cal_of:
            after.add(cal_of[cell.id].id)
        twin = bf16_twin_id(cell.id)
        if cell.is_fp8 and Stage.ACCURACY in its and twin in serving_ids:
            (after_start if twin_order == "start" else after).add(serving_ids[twin])
        units.append(
            WorkUnit(
                id=serving_ids[cell.id],
                kind=UnitKind.SERVING,
                cells=(cell.id,),
                stages=its,
                demand=demand,
                after=frozenset(after),
                after_start=frozenset(after_start),
                lands_on=tuple(u.id for u in node_units.get(demand.nodes, [])),
                items=tuple((cell.id, s) for s in its),
            )
        )
    return WorkPlan(tuple(units), nodes, cards_per_node, notes=(TWIN_NOTES[twin_order],))


def _stages(cell: Cell, selected: Collection[Stage] | None) -> tuple[Stage, ...]:
    return tuple(s for s in cell.stages if selected is None or s in selected)


def _serving_id(cell: Cell) -> str:
    return f"serving/{cell.id}"


def _serving_stages(
    cell: Cell, chosen: dict[str, tuple[Stage, ...]], cal_of: dict[str, WorkUnit]
) -> tuple[Stage, ...]:
    """The cell's serving phase: its serving stages, plus its calibration stage (a cache hit
    and the derivation) unless the cell is the one its calibration unit runs for."""
    owner = cal_of[cell.id].items[0][0] if cell.id in cal_of else None
    keep = set(SERVING_STAGES) | ({Stage.CALIBRATION} if owner != cell.id else set())
    its = tuple(s for s in chosen[cell.id] if s in keep)
    return its if any(s in SERVING_STAGES for s in its) or Stage.CALIBRATION in its else ()


def _demand(cell: Cell, need: int, cards_per_node: int, nodes: int, what: str) -> Demand:
    if need > nodes:
        raise PlanError(
            f"cell {cell.id}: its {what} needs {need} node(s) of {cards_per_node} card(s) but "
            f"the cluster has {nodes}; run it on a cluster of {need} node(s) or deselect it "
            "(--cells / -k)"
        )
    if need > 1:
        return Demand(need, cards_per_node, whole_nodes=True)
    world = ranks(cell.tp, cell.pp, cell.ep) if what == "serving" else None
    return Demand(1, world if world is not None else cards_per_node)


def _node_phases(
    cells: Sequence[Cell], chosen: dict[str, tuple[Stage, ...]], nodes: int, cards_per_node: int
) -> dict[int, list[WorkUnit]]:
    """Per node-set size k: one unit per aligned set of k nodes ([0..k), [k..2k), ...), holding
    its whole nodes; every cell of size k lands on one of those sets."""
    by_size: dict[int, list[Cell]] = {}
    for cell in cells:
        if any(s in NODE_STAGES for s in chosen[cell.id]):
            by_size.setdefault(cell.nodes, []).append(cell)
    out: dict[int, list[WorkUnit]] = {}
    for k, group in sorted(by_size.items()):
        _demand(group[0], k, cards_per_node, nodes, "node phase")
        stages = tuple(s for s in NODE_STAGES if any(s in chosen[c.id] for c in group))
        device = group[0].device
        out[k] = [
            WorkUnit(
                id=f"node/{device}/n{k}/{first}" + (f"-{first + k - 1}" if k > 1 else ""),
                kind=UnitKind.NODE,
                cells=tuple(c.id for c in group),
                stages=stages,
                demand=Demand(k, cards_per_node, True, tuple(range(first, first + k))),
                items=tuple((group[0].id, s) for s in stages),
            )
            for first in range(0, nodes - k + 1, k)
        ]
    return out


def _calibrations(
    cells: Sequence[Cell],
    chosen: dict[str, tuple[Stage, ...]],
    nodes: int,
    cards_per_node: int,
    key_of: KeyFunction,
    calibrated: Collection[str],
) -> dict[str, WorkUnit]:
    """One calibration unit per key, mapped from each cell that derives from it."""
    groups: dict[str, list[Cell]] = {}
    for cell in cells:
        if cell.is_fp8 and Stage.CALIBRATION in chosen[cell.id]:
            key = key_of(cell)
            if key not in calibrated:
                groups.setdefault(key, []).append(cell)
    out: dict[str, WorkUnit] = {}
    for key, group in groups.items():
        first = group[0]
        tp, ep = calibrate_layout(first)
        world = ranks(tp, first.pp, ep)
        need = nodes_for(world, cards_per_node)
        demand = _demand(first, need, cards_per_node, nodes, f"calibration at TP{tp}/EP{ep}")
        if need == 1:
            demand = Demand(1, world)
        unit = WorkUnit(
            id=f"calibration/{first.model.name}/{first.device}/tp{tp}-ep{ep}/{key[:8]}",
            kind=UnitKind.CALIBRATION,
            cells=tuple(c.id for c in group),
            stages=(Stage.CALIBRATION,),
            demand=demand,
            items=((first.id, Stage.CALIBRATION),),
        )
        out.update({c.id: unit for c in group})
    return out
