"""The work plan of a run and its list schedule, in simulation (no Ray)."""

from __future__ import annotations

import zlib
from dataclasses import replace
from pathlib import Path

import pytest

from harness.cell import Stage
from harness.matrix import load_matrix
from harness.references import NoReferences
from harness.references import RunReferences
from harness.results import RunStore
from harness.results import StageResult
from harness.workplan.dispatch import Dispatcher
from harness.workplan.dispatch import read_assignment
from harness.workplan.dispatch import suite_item
from harness.workplan.dispatch import write_assignment
from harness.workplan.figures import UnitRecord
from harness.workplan.figures import overlaps
from harness.workplan.figures import run_figures
from harness.workplan.leases import GroupName
from harness.workplan.leases import Lease
from harness.workplan.leases import LeasedNode
from harness.workplan.plan import build_plan
from harness.workplan.plan import plain_key
from harness.workplan.scheduler import Scheduler
from harness.workplan.scheduler import simulate
from harness.workplan.twins import TwinWaitingReferences
from harness.workplan.units import Demand
from harness.workplan.units import PlanError
from harness.workplan.units import UnitKind
from harness.workplan.units import WorkPlan
from harness.workplan.units import WorkUnit

LLAMA8_BF16 = "llama-3.1-8b/g2/tp1/bf16-kv-auto"
LLAMA8_FP8 = "llama-3.1-8b/g2/tp1/fp8-kv-auto"
LLAMA405 = "llama-3.1-405b/g2/tp8/fp8-kv-fp8_inc"
CASES = [
    ("nightly-g2", 2),
    ("nightly-g2", 4),
    ("nightly-g3", 2),
    ("deepseek-r1-multinode", 4),
]


def passed_result(cell_id: str) -> StageResult:
    return StageResult(cell_id, "accuracy", "passed", metrics={"exact_match_strict": 0.5})


def duration(unit: WorkUnit) -> float:
    """Varied, deterministic durations (the order of events must not matter)."""
    return 100.0 + zlib.crc32(unit.id.encode()) % 5000


@pytest.fixture(scope="module")
def g2() -> WorkPlan:
    return build_plan(load_matrix("nightly-g2").cells, 2, 8)


def test_plan_has_node_phases_one_calibration_per_key_and_a_serving_phase_per_cell(
    g2: WorkPlan,
) -> None:
    kinds = {k: [u.id for u in g2.units if u.kind is k] for k in UnitKind}
    assert kinds[UnitKind.NODE] == ["node/g2/n1/0", "node/g2/n1/1"]
    # the two llama-8b FP8 cells (kv auto and fp8_inc) share one calibration, as do the
    # two DeepSeek cells; 405B has its own
    assert len(kinds[UnitKind.CALIBRATION]) == 3
    assert len(kinds[UnitKind.SERVING]) == 6
    shared = g2.of_cell(LLAMA8_FP8, UnitKind.CALIBRATION)
    assert len(shared) == 1 and len(shared[0].cells) == 2
    assert [u.id for u in g2.topological()][:2] == kinds[UnitKind.NODE]


def test_serving_waits_for_its_calibration_and_its_bf16_twin(g2: WorkPlan) -> None:
    fp8 = g2.unit(f"serving/{LLAMA8_FP8}")
    cal = g2.of_cell(LLAMA8_FP8, UnitKind.CALIBRATION)[0]
    assert fp8.after == {cal.id}
    # it may run beside its twin once the twin started; its gate waits for the twin's record
    assert fp8.after_start == {f"serving/{LLAMA8_BF16}"}
    assert fp8.lands_on == ("node/g2/n1/0", "node/g2/n1/1")
    assert g2.unit(f"serving/{LLAMA8_BF16}").after == frozenset()
    assert any("BF16 twin" in note for note in g2.notes)
    after = build_plan(load_matrix("nightly-g2").cells, 2, 8, twin_order="finish")
    assert after.unit(fp8.id).after == {cal.id, f"serving/{LLAMA8_BF16}"}
    assert not after.unit(fp8.id).after_start


def test_stages_are_split_between_units(g2: WorkPlan) -> None:
    node = g2.unit("node/g2/n1/0")
    assert node.stages == (Stage.PREFLIGHT, Stage.COLLECTIVES)
    cal = g2.of_cell(LLAMA8_FP8, UnitKind.CALIBRATION)[0]
    owner, other = cal.cells
    assert cal.items == ((owner, Stage.CALIBRATION),)
    # the owner's calibration stage runs in the calibration unit, the other's (a cache hit and
    # the derivation) in its own serving phase
    assert Stage.CALIBRATION not in g2.unit(f"serving/{owner}").stages
    assert g2.unit(f"serving/{other}").stages[0] is Stage.CALIBRATION


def test_demands_are_ranks_on_one_node_or_whole_nodes(g2: WorkPlan) -> None:
    assert g2.unit(f"serving/{LLAMA8_BF16}").demand == Demand(1, 1)
    assert g2.unit(f"serving/{LLAMA405}").demand == Demand(1, 8)
    # 405B is served at TP8 but calibrated at TP16: two whole nodes
    assert g2.of_cell(LLAMA405, UnitKind.CALIBRATION)[0].demand == Demand(2, 8, True)
    assert g2.unit("node/g2/n1/1").demand == Demand(1, 8, True, (1,))
    multi = build_plan(load_matrix("deepseek-r1-multinode").cells, 4, 8)
    n4 = multi.unit("serving/deepseek-r1-0528/g2-n4/tp32-ep32/fp8-kv-fp8_inc")
    assert n4.demand == Demand(4, 8, True)
    assert n4.lands_on == ("node/g2/n4/0-3",)
    assert [u.id for u in multi.units if u.id.startswith("node/g2/n2")] == [
        "node/g2/n2/0-1",
        "node/g2/n2/2-3",
    ]


def test_a_cell_that_cannot_fit_is_an_error_naming_it() -> None:
    with pytest.raises(PlanError, match=f"cell {LLAMA405}: its calibration at TP16.* 2 node"):
        build_plan(load_matrix("nightly-g2").cells, 1, 8)
    n4 = "deepseek-r1-0528/g2-n4/tp32-ep32/fp8-kv-fp8_inc"
    with pytest.raises(PlanError, match=f"cell {n4}: .*needs 4 node.*the cluster has 2"):
        build_plan(load_matrix("deepseek-r1-multinode").cells, 2, 8)


def test_cached_calibrations_are_not_planned() -> None:
    cells = load_matrix("nightly-g2").cells
    keys = {plain_key(c) for c in cells if c.is_fp8}
    plan = build_plan(cells, 2, 8, calibrated=keys)
    assert not [u for u in plan.units if u.kind is UnitKind.CALIBRATION]
    assert plan.unit(f"serving/{LLAMA405}").stages[0] is Stage.CALIBRATION


def test_stage_selection_drops_units() -> None:
    plan = build_plan(load_matrix("nightly-g2").cells, 2, 8, stages={Stage.COLLECTIVES})
    assert {u.kind for u in plan.units} == {UnitKind.NODE}
    assert plan.unit("node/g2/n1/0").stages == (Stage.COLLECTIVES,)


def test_unknown_dependency_and_cycle_are_plan_errors() -> None:
    a = WorkUnit("a", UnitKind.SERVING, ("c",), (), Demand(1, 1), frozenset({"b"}))
    with pytest.raises(PlanError, match="unit a waits for"):
        WorkPlan((a,), 1, 8)
    b = WorkUnit("b", UnitKind.SERVING, ("c",), (), Demand(1, 1), frozenset({"a"}))
    with pytest.raises(PlanError, match="cycle"):
        WorkPlan((a, b), 1, 8).topological()


@pytest.mark.parametrize(("matrix", "nodes"), CASES)
def test_simulated_schedule_keeps_every_rule(matrix: str, nodes: int) -> None:
    plan = build_plan(load_matrix(matrix).cells, nodes, 8)
    records = {r.unit: r for r in simulate(plan, duration)}
    assert set(records) == {u.id for u in plan.units}
    assert overlaps(list(records.values())) == []  # no two concurrent units share a card
    for unit in plan.units:
        rec = records[unit.id]
        held = {n for n, _ in rec.cards}
        if unit.demand.whole_nodes:  # multi-node units and node phases get whole nodes
            assert sorted(rec.cards) == [(n, c) for n in sorted(held) for c in range(8)]
            assert len(held) == unit.demand.nodes
        else:
            assert len(held) == 1 and len(rec.cards) == unit.demand.cards
        for dep in unit.after:  # calibrations finish before dependants
            assert records[dep].end <= rec.start
        for dep in unit.after_start:  # a BF16 twin starts no later than its FP8 cell
            assert records[dep].start <= rec.start
        if unit.lands_on:  # on nodes a node phase checked before it started
            checked = {
                n for p in unit.lands_on for n, _ in records[p].cards if records[p].end <= rec.start
            }
            assert held <= checked
    phases = [records[u.id] for u in plan.units if u.kind is UnitKind.NODE]
    serving = [records[u.id] for u in plan.units if u.kind is UnitKind.SERVING]
    for p in phases:  # a node phase never overlaps a serving phase on the same node
        for s in serving:
            same_node = {n for n, _ in p.cards} & {n for n, _ in s.cards}
            assert not same_node or p.end <= s.start or s.end <= p.start


def test_smoke_cpu_on_one_two_core_host() -> None:
    """The cpu backend's Ray node has 2 CPUs: the TP1 cells share it, the TP2/EP2 MoE takes
    both, preflight and collectives run once for the host."""
    plan = build_plan(load_matrix("smoke-cpu").cells, 1, 2)
    nodes = [u for u in plan.units if u.kind is UnitKind.NODE]
    assert [u.id for u in nodes] == ["node/cpu/n1/0"]
    assert plan.unit_for("tiny-llama/cpu/tp1/fp8-kv-fp8", Stage.COLLECTIVES) == nodes[0]
    moe = plan.unit("serving/tiny-moe/cpu/tp2-ep2/fp8-kv-fp8")
    assert moe.demand == Demand(1, 2)
    records = {r.unit: r for r in simulate(plan, duration)}
    bf16 = records["serving/tiny-llama/cpu/tp1/bf16-kv-auto"]
    fp8 = records["serving/tiny-llama/cpu/tp1/fp8-kv-fp8"]
    assert {c for _, c in bf16.cards} | {c for _, c in fp8.cards} == {0, 1}
    assert overlaps(list(records.values())) == []


def test_a_failed_unit_blocks_its_dependants_and_frees_its_cards() -> None:
    plan = build_plan(load_matrix("nightly-g2").cells, 2, 8)
    sched = Scheduler(plan, duration, priority="wide")
    started = []
    while (a := sched.start_next()) is not None:
        started.append(a)
    assert {a.unit.kind for a in started} == {UnitKind.NODE}
    sched.finish("node/g2/n1/0")
    sched.finish("node/g2/n1/1")
    cal = plan.of_cell(LLAMA405, UnitKind.CALIBRATION)[0]
    first = sched.start_next()
    assert first is not None and first.unit.id == cal.id  # widest first
    assert first.nodes == (0, 1)
    sched.finish(cal.id, ok=False)
    assert f"serving/{LLAMA405}" in sched.blocked
    assert sched.start_next() is not None  # its cards are free again


def test_an_fp8_lookup_waits_for_the_twin_running_beside_it(tmp_path: Path) -> None:
    cell = next(
        c for c in load_matrix("smoke-cpu").cells if c.id == "tiny-llama/cpu/tp1/fp8-kv-fp8"
    )
    twin = "tiny-llama/cpu/tp1/bf16-kv-auto"
    store = RunStore(tmp_path, "run")
    store.open({})
    refs = RunReferences(store, {cell.id, twin}, {cell.id, twin})
    polls: list[float] = []

    def sleep(seconds: float) -> None:  # the twin records its accuracy on the second poll
        polls.append(seconds)
        if len(polls) == 2:
            store.append(passed_result(twin))

    running = [(twin, "accuracy"), (cell.id, "accuracy")]
    waiting = TwinWaitingReferences(refs, store, running, lambda c: 60.0, poll_s=1, sleep=sleep)
    ref = waiting.bf16_for(cell, "accuracy")
    assert ref.metrics == {"exact_match_strict": 0.5} and len(polls) == 2
    # a twin this run does not run is not waited for; one that never records: until the timeout
    alone = TwinWaitingReferences(NoReferences(), store, [], lambda c: 60.0, sleep=sleep)
    assert alone.bf16_for(cell, "accuracy").metrics is None and len(polls) == 2
    stalled = TwinWaitingReferences(NoReferences(), store, [(twin, "throughput")],
                                    lambda c: 0.0, sleep=sleep)
    assert stalled.bf16_for(cell, "throughput").metrics is None and len(polls) == 2


def test_run_figures() -> None:
    records = [
        UnitRecord("a", 0.0, 10.0, ((0, 0), (0, 1))),
        UnitRecord("b", 5.0, 20.0, ((0, 2),)),
    ]
    figs = run_figures(records, total_cards=4)
    assert (figs.makespan_s, figs.unit_seconds, figs.busy_card_seconds) == (20.0, 25.0, 35.0)
    assert figs.utilisation == pytest.approx(35.0 / 80.0)
    assert run_figures([], 8).utilisation == 0.0
    assert overlaps([*records, UnitRecord("c", 9.0, 11.0, ((0, 1),))]) == [("a", "c", (0, 1))]
    assert [UnitRecord.from_dict(r.as_dict()) for r in records] == records


def test_lease_env_and_group_names() -> None:
    hpu = Lease("u", "n", "HPU", (LeasedNode("id", "10.0.0.1", (2, 3)),), None)
    assert hpu.env() == {"HABANA_VISIBLE_MODULES": "2,3"}
    assert hpu.address == "10.0.0.1"
    cpu = Lease("u", "n", "CPU", (LeasedNode("id", "127.0.0.1", (0, 1)),), None)
    assert cpu.env() == {"VLLM_CPU_OMP_THREADS_BIND": "0|1"}
    name = GroupName("run1", "host", 42, "serving/m/g2/tp1/bf16-kv-auto")
    assert GroupName.parse(name.render()) == name
    assert GroupName.parse("someone-else:x") is None


def test_dispatcher_hands_out_units_with_their_items(tmp_path: Path) -> None:
    cells = load_matrix("smoke-cpu").cells
    plan = build_plan(cells, 1, 2)
    collection = ["tests/test_other.py::test_plain"] + [
        f"suites/test_{s.value}.py::test_{s.value}[{c.id}]" for c in cells for s in c.stages
    ]
    dispatcher = Dispatcher(plan, collection, duration, clock=lambda: 0.0)
    first = dispatcher.next_unit()
    assert first == (None, [0])  # the test without a cell goes first, alone
    sent: list[int] = [0]
    done_units: list[str] = []
    while not dispatcher.finished:
        running = []
        while (batch := dispatcher.next_unit()) is not None:
            found, indices = batch
            assert found is not None
            write_assignment(tmp_path, found, indices)
            ticket = read_assignment(tmp_path, found.unit.id)
            assert ticket is not None and ticket.nodes == found.nodes
            assert ticket.indices == tuple(indices) and ticket.unit.items == found.unit.items
            assert ticket.unit.demand == replace(found.unit.demand, pinned=())
            running.append(indices)
            sent += indices
        assert running, "a unit must be able to start when nothing runs"
        for indices in running:
            ends = [dispatcher.complete(i) for i in indices]
            assert ends[:-1] == [None] * (len(ends) - 1) and ends[-1] is not None
            done_units.append(ends[-1])
    assert sorted(sent) == list(range(len(collection)))  # every item once
    assert done_units[0] == "node/cpu/n1/0"
    # the first cell's preflight runs in the node phase, the others' reference it in their
    # serving phase
    node_items = [collection[i] for i in dispatcher.items["node/cpu/n1/0"]]
    assert len(node_items) == 2 and all(cells[0].id in n for n in node_items)
    assert suite_item(collection[1]) == (cells[0].id, Stage.PREFLIGHT)
    assert read_assignment(tmp_path, "no/such/unit") is None


def test_a_failed_node_phase_blocks_what_can_no_longer_land_and_nothing_hangs() -> None:
    plan = build_plan(load_matrix("nightly-g2").cells, 2, 8)
    sched = Scheduler(plan, duration)
    while sched.start_next() is not None:
        pass
    sched.finish("node/g2/n1/0", ok=False)
    sched.finish("node/g2/n1/1")
    cal405 = plan.of_cell(LLAMA405, UnitKind.CALIBRATION)[0].id
    # 405B's calibration needs both nodes checked: it (and its serving phase) are blocked,
    # the one-node units still land on node 1
    assert {cal405, f"serving/{LLAMA405}"} <= sched.blocked
    records = []
    while not sched.finished:
        found = sched.start_next()
        assert found is not None and found.nodes == (1,)
        records.append(found.unit.id)
        sched.finish(found.unit.id)
    assert f"serving/{LLAMA8_FP8}" in records and sched.stuck() == []


def test_dispatcher_names_the_units_it_waits_for_when_stuck() -> None:
    unit = WorkUnit(
        "serving/x",
        UnitKind.SERVING,
        ("x",),
        (Stage.SERVING,),
        Demand(1, 9),
        items=(("x", Stage.SERVING),),
    )
    plan = WorkPlan((unit,), 1, 8)  # a unit wider than its node: no plan builds this
    dispatcher = Dispatcher(plan, ["suites/test_serving.py::test_serving[x]"], duration)
    assert dispatcher.next_unit() is None
    with pytest.raises(PlanError, match="no unit can start.*serving/x"):
        dispatcher.check_progress()
