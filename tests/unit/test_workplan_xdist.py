"""The xdist controller's unit scheduling driven to the end by simulated workers.

The workers are stand-ins for xdist's WorkerController (what the controller calls on a worker:
send items, shut down); the plan, the dispatcher, the scheduler and the tickets the workers read
are the real ones. Each simulated worker runs its items in order, one event at a time, and the
run must end with every item run once, no two running units on the same card, and no worker
left waiting.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import process
from harness.cell import Stage
from harness.cluster import RayCluster
from harness.matrix import load_matrix
from harness.results import RunStore
from harness.workplan.dispatch import Dispatcher
from harness.workplan.dispatch import read_assignment
from harness.workplan.dispatch import write_assignment
from harness.workplan.figures import UnitRecord
from harness.workplan.leases import Lease
from harness.workplan.leases import LeasedNode
from harness.workplan.plan import build_plan
from harness.workplan.scheduler import Assignment
from harness.workplan.units import Demand
from harness.workplan.units import UnitKind
from harness.workplan.units import WorkUnit
from harness.workplan.worker import UnitWorker
from harness.workplan.xdist import LOOSE
from harness.workplan.xdist import UnitScheduling
from harness.workplan.xdist import index_path


class Gateway:
    def __init__(self, name: str) -> None:
        self.id = name


class Worker:
    """What the controller sees of an xdist worker."""

    def __init__(self, name: str) -> None:
        self.gateway = Gateway(name)
        self.shutting_down = False
        self.queue: list[int] = []

    def send_runtest_some(self, indices: list[int]) -> None:
        assert not self.shutting_down, "items sent to a worker that was shut down"
        self.queue.extend(indices)

    def shutdown(self) -> None:
        self.shutting_down = True

    def __repr__(self) -> str:
        return self.gateway.id


def smoke_collection() -> tuple[list[str], Dispatcher]:
    cells = load_matrix("smoke-cpu").cells
    collection = [
        f"suites/test_{s.value}.py::test_{s.value}[{c.id}]" for c in cells for s in c.stages
    ]
    return collection, Dispatcher(build_plan(cells, 1, 2), collection)


def one_worker(tmp_path: Path) -> tuple[list[str], Dispatcher, UnitScheduling, Worker]:
    """smoke-cpu's collection scheduled onto one simulated worker."""
    collection, dispatcher = smoke_collection()
    sched = UnitScheduling(None, lambda *a: None, lambda items: dispatcher, tmp_path, numnodes=1)
    gw0 = Worker("gw0")
    sched.add_node(gw0)  # type: ignore[arg-type]
    sched.add_node_collection(gw0, collection)  # type: ignore[arg-type]
    sched.schedule()
    return collection, dispatcher, sched, gw0


def held_cards(dispatcher: Dispatcher) -> dict[str, set[tuple[int, int]]]:
    return {
        unit: {(n, c) for n, cards in found.cards.items() for c in cards}
        for unit, found in dispatcher.scheduler.running.items()
    }


def test_two_workers_run_every_item_once_on_disjoint_cards(tmp_path: Path) -> None:
    collection, dispatcher = smoke_collection()
    sched = UnitScheduling(None, lambda *a: None, lambda items: dispatcher, tmp_path, numnodes=2)
    workers = [Worker("gw0"), Worker("gw1")]
    for w in workers:
        sched.add_node(w)  # type: ignore[arg-type]
        sched.add_node_collection(w, collection)  # type: ignore[arg-type]
    assert sched.collection_is_completed
    sched.schedule()
    ran: list[int] = []
    concurrent = 0
    steps = 0
    while not sched.tests_finished:
        steps += 1
        assert steps < 1000, "the run does not end"
        busy = [w for w in workers if w.queue]
        assert busy, "nothing runs and the run is not finished"
        held = held_cards(dispatcher)
        cards = [c for hs in held.values() for c in hs]
        assert len(cards) == len(set(cards)), f"two units hold one card: {held}"
        concurrent = max(concurrent, len(held))
        worker = busy[steps % len(busy)]  # interleave the workers
        index = worker.queue.pop(0)
        ran.append(index)
        sched.mark_test_complete(worker, index)  # type: ignore[arg-type]
    assert sorted(ran) == list(range(len(collection)))
    assert all(w.shutting_down for w in workers)
    assert concurrent == 2  # the two TP1 tiny-llama units held one core each at once
    # the node phase ran first, alone
    first = json.loads(index_path(tmp_path).read_text())[str(ran[0])]
    assert first == "node/cpu/n1/0"
    ticket = read_assignment(tmp_path, "node/cpu/n1/0")
    assert ticket is not None and ticket.unit.demand.cards == 2 and ticket.nodes == (0,)


def test_a_unit_whose_worker_died_frees_its_cards_and_the_rest_goes_on(tmp_path: Path) -> None:
    collection, dispatcher = smoke_collection()
    sched = UnitScheduling(None, lambda *a: None, lambda items: dispatcher, tmp_path, numnodes=2)
    gw0, gw1 = Worker("gw0"), Worker("gw1")
    for w in (gw0, gw1):
        sched.add_node(w)  # type: ignore[arg-type]
        sched.add_node_collection(w, collection)  # type: ignore[arg-type]
    sched.schedule()
    owner = gw0 if gw0.queue else gw1
    other = gw1 if owner is gw0 else gw0
    assert not other.queue  # the node phase holds the whole node: nothing else runs
    crashed = sched.remove_node(owner)  # type: ignore[arg-type]
    assert crashed == collection[owner.queue[0]]  # reported as the crashed item
    assert "node/cpu/n1/0" not in dispatcher.scheduler.running  # its cards are free again
    assert other.queue  # and the next unit went to the live worker
    while other.queue:
        sched.mark_test_complete(other, other.queue.pop(0))  # type: ignore[arg-type]
    assert sched.tests_finished and other.shutting_down


def test_a_worker_knows_the_last_item_of_each_unit(tmp_path: Path) -> None:
    collection, dispatcher, sched, gw0 = one_worker(tmp_path)
    worker = UnitWorker(tmp_path, None, None, lambda cell: None)  # type: ignore[arg-type]
    sent = list(gw0.queue)
    assert [worker.ends_batch(i) for i in sent] == [False] * (len(sent) - 1) + [True]
    assert worker.batch_of(sent[0]) == "node/cpu/n1/0"
    assert worker.batch_of(10_000) == LOOSE


def test_the_two_tp1_cells_share_the_host_and_the_moe_cell_takes_it_after(tmp_path: Path) -> None:
    """smoke-cpu on 2 cores, by a real clock's order of events: once the MoE calibration ends,
    the FP8 TP1 cell starts beside its running BF16 twin (relaxed backfilling) instead of
    leaving a core idle until the BF16 cell ends; the TP2/EP2 MoE cell runs on both after."""
    cells = load_matrix("smoke-cpu").cells
    collection = [
        f"suites/test_{s.value}.py::test_{s.value}[{c.id}]" for c in cells for s in c.stages
    ]
    now = [0.0]
    dispatcher = Dispatcher(build_plan(cells, 1, 2), collection, clock=lambda: now[0])

    def start() -> str | None:
        batch = dispatcher.next_unit()
        return batch[0].unit.id if batch and batch[0] else None

    def finish(unit: str) -> None:
        for index in dispatcher.items[unit]:
            dispatcher.complete(index)

    assert start() == "node/cpu/n1/0"
    assert start() is None
    now[0] = 10
    finish("node/cpu/n1/0")
    calibration = start()
    assert calibration is not None and calibration.startswith("calibration/tiny-llama")
    now[0] = 27
    finish(calibration)
    pair = {start(), start()}
    assert pair == {"serving/tiny-llama/cpu/tp1/bf16-kv-auto",
                    next(u for u in dispatcher.items if u.startswith("calibration/tiny-moe"))}
    now[0] = 30
    finish(next(u for u in pair if u and u.startswith("calibration/")))
    assert start() == "serving/tiny-llama/cpu/tp1/fp8-kv-fp8"
    now[0] = 130
    finish("serving/tiny-llama/cpu/tp1/bf16-kv-auto")
    assert start() is None  # the MoE cell needs both cores
    now[0] = 135
    finish("serving/tiny-llama/cpu/tp1/fp8-kv-fp8")
    assert start() == "serving/tiny-moe/cpu/tp2-ep2/fp8-kv-fp8"


def test_a_failed_node_phase_keeps_the_units_off_its_nodes_and_the_run_ends(tmp_path: Path) -> None:
    collection, dispatcher, sched, gw0 = one_worker(tmp_path)
    node_items = list(gw0.queue)
    assert all("preflight" in collection[i] or "collectives" in collection[i] for i in node_items)
    sched.note_failed(collection[node_items[0]])  # the preflight failed
    for index in node_items:
        gw0.queue.remove(index)
        sched.mark_test_complete(gw0, index)  # type: ignore[arg-type]
    assert not gw0.queue and gw0.shutting_down and sched.tests_finished
    assert dispatcher.scheduler.failed == {"node/cpu/n1/0"}
    assert len(dispatcher.scheduler.blocked) == len(dispatcher.items) - 1  # nothing else ran


def test_the_units_section_gives_makespan_sum_and_utilisation(tmp_path: Path) -> None:
    from harness.report.html import _units
    from harness.workplan.figures import units_section

    records = [
        {"kind": "run", "run_id": "r"},
        {"kind": "cluster", "resource": "CPU", "nodes": 1, "cards_per_node": 2},
        UnitRecord("node/cpu/n1/0", 100.0, 110.0, ((0, 0), (0, 1)), "node").as_dict(),
        UnitRecord("serving/a", 110.0, 210.0, ((0, 0),), "serving").as_dict(),
        UnitRecord("serving/b", 110.0, 160.0, ((0, 1),), "serving", "10.0.0.2/8b9ca65a").as_dict(),
    ]
    lines = units_section(records)
    # makespan 110 s; units 10 + 100 + 50 s; busy 20 + 100 + 50 of 2 x 110 card-seconds
    assert "makespan 110 s, sum of unit times 160 s, utilisation 77%" in lines[2]
    assert lines[6] == "| node/cpu/n1/0 | node | +0 s | 10 s | 0:0 0:1 | harness host |"
    assert lines[8] == "| serving/b | serving | +10 s | 50 s | 0:1 | 10.0.0.2/8b9ca65a |"
    assert not any("two units at once" in line for line in lines)
    clash = [*records, UnitRecord("serving/c", 150.0, 170.0, ((0, 1),), "serving").as_dict()]
    assert "serving/b and serving/c on (0, 1)" in units_section(clash)[-1]
    assert units_section(records[:2]) == []
    (tmp_path / "results.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    html = _units(tmp_path)
    assert 'id="units"' in html and "utilisation 77%" in html and "serving/b" in html
    (tmp_path / "results.jsonl").write_text(json.dumps(records[0]) + "\n")
    assert _units(tmp_path) == ""


class Leases:
    """Records what a worker asks of the run's lease manager (Ray's side is tested in
    tests/integration/test_workplan_leases.py)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    @contextlib.contextmanager
    def lease(self, unit: WorkUnit, nodes: tuple[int, ...]) -> Iterator[Lease]:
        self.calls.append(("lease", unit.id))
        held = tuple(LeasedNode(f"node{n}", "10.0.0.1", (2, 3)) for n in nodes)
        try:
            yield Lease(unit.id, "g", "HPU", held, None)
        finally:
            self.calls.append(("release", unit.id))

    def hand_over(self, lease: Lease) -> None:
        self.calls.append(("hand_over", lease.unit))


def test_a_worker_leases_each_unit_hands_multinode_servers_their_cards_and_records_it(
    tmp_path: Path,
) -> None:
    store = RunStore(tmp_path, "run")
    store.open({})
    units = [
        WorkUnit("node/g2/n2/0-1", UnitKind.NODE, ("c",), (Stage.PREFLIGHT,), Demand(2, 8, True)),
        WorkUnit("serving/c", UnitKind.SERVING, ("c",), (Stage.SERVING,), Demand(2, 8, True)),
        WorkUnit("serving/d", UnitKind.SERVING, ("d",), (Stage.SERVING,), Demand(1, 2)),
    ]
    for index, unit in enumerate(units):
        nodes = (0, 1) if unit.demand.nodes == 2 else (1,)
        found = Assignment(unit, {n: tuple(range(unit.demand.cards)) for n in nodes})
        write_assignment(store.dir, found, [index])
    index_path(store.dir).write_text(json.dumps({str(i): u.id for i, u in enumerate(units)}))
    leases = Leases()
    worker = UnitWorker(store.dir, store, leases, lambda cell: RayCluster("127.0.0.1:1"),  # type: ignore[arg-type]
                        own_node=lambda: "node0")
    sites = []
    for index in range(3):
        assert worker.ends_batch(index)
        worker.enter(index)
        assert process.placement_env() == {"HABANA_VISIBLE_MODULES": "2,3"}
        found = process.site()
        sites.append(found.label if found is not None else None)
        worker.leave()
        assert process.placement_env() == {} and process.site() is None
    # a unit whose (first) leased node is not the worker's own starts its commands there
    assert sites == [None, None, "10.0.0.1/node1"]
    assert leases.calls == [
        ("lease", "node/g2/n2/0-1"), ("release", "node/g2/n2/0-1"),
        ("lease", "serving/c"), ("hand_over", "serving/c"), ("release", "serving/c"),
        ("lease", "serving/d"), ("release", "serving/d"),
    ]
    lines = [json.loads(line) for line in store.path.read_text().splitlines()]
    recorded = [UnitRecord.from_dict(r) for r in lines if r.get("kind") == "unit"]
    assert [r.unit for r in recorded] == [u.id for u in units]
    assert recorded[1].cards == ((0, 2), (0, 3), (1, 2), (1, 3)) and recorded[2].kind == "serving"
    assert [r.ran_on for r in recorded] == ["", "", "10.0.0.1/node1"]


def test_a_cluster_run_plans_onto_the_nodes_that_see_its_files_and_says_why_not_the_others(
) -> None:
    from harness.workplan.run import ClusterShape
    from harness.workplan.run import plan_run
    from harness.workplan.units import PlanError

    cells = load_matrix("nightly-g2").cells
    why = "b does not see /nfs/models; the run directory and the model paths must be on storage"
    here = ClusterShape("HPU", ("head",), 8, "10.0.0.1:6379", {"10.0.0.2/abcd1234": why})
    assert here.as_record()["unused_nodes"] == {"10.0.0.2/abcd1234": why} and here.nodes == 1
    with pytest.raises(PlanError, match=r"cell llama-3\.1-405b/g2/tp8/fp8-kv-fp8_inc: .*2 node"
                       r".*\(1 Ray node\(s\) with HPU are not used \(10\.0\.0\.2/abcd1234: b "
                       r"does not see /nfs/models"):
        plan_run(cells, None, here)
    small = [c for c in cells if "405b" not in c.id]
    assert plan_run(small, None, here).nodes == 1
    assert ClusterShape("HPU", ("a", "b"), 8, "x:1").unused() == ""


def test_harness_units_shows_the_plan_a_cluster_run_would_follow(capsys: pytest.CaptureFixture[str]) -> None:
    from harness.cli import main
    from harness.workplan.figures import overlaps

    assert main(["units", "--matrix", "smoke-cpu", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["nodes"], report["cards_per_node"], len(report["units"])) == (1, 2, 6)
    assert report["units"][0]["unit"] == "node/cpu/n1/0" and report["units"][0]["start_s"] == 0
    records = [UnitRecord(u["unit"], u["start_s"], u["end_s"], tuple(map(tuple, u["cards"])))
               for u in report["units"]]
    assert all(len(u["cards"]) == u["nodes"] * u["cards_per_node"] for u in report["units"])
    assert overlaps(records) == []  # the simulated order never shares a card
    assert main(["units", "--matrix", "nightly-g2", "--nodes", "2"]) == 0
    assert "11 units on 2 node(s) x 8 card(s)" in capsys.readouterr().out
    assert main(["units", "--matrix", "nightly-g2", "--nodes", "1"]) == 2
    assert "cell llama-3.1-405b/g2/tp8/fp8-kv-fp8_inc: its calibration at TP16" in (
        capsys.readouterr().err
    )


def test_a_new_unit_learns_that_its_cells_calibration_failed_in_another_unit(
    tmp_path: Path,
) -> None:
    from harness.results import StageResult

    store = RunStore(tmp_path, "run")
    store.open({})
    unit = WorkUnit("serving/c", UnitKind.SERVING, ("c",), (Stage.SERVING, Stage.ACCURACY),
                    Demand(1, 1), items=(("c", Stage.SERVING), ("c", Stage.ACCURACY)))
    write_assignment(store.dir, Assignment(unit, {0: (0,)}), [0, 1])
    index_path(store.dir).write_text(json.dumps({"0": unit.id, "1": unit.id}))
    store.append(StageResult("c", "calibration", "failed", message="c [calibration]: no scales"))
    store.append(StageResult("d", "calibration", "failed", message="another cell's"))
    worker = UnitWorker(store.dir, store, Leases(), lambda cell: RayCluster("127.0.0.1:1"),  # type: ignore[arg-type]
                        own_node=lambda: "node0")
    selected = frozenset(
        [("c", "calibration"), ("c", "serving"), ("c", "accuracy"), ("d", "calibration")]
    )
    first = worker.setup(0, "c", "serving", selected)
    assert first.failed_elsewhere == {"c": "calibration failed: [calibration]: no scales"}
    assert worker.setup(1, "c", "accuracy", selected).failed_elsewhere == {}  # once a unit
    worker.leave()
