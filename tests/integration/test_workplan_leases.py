"""Card leases on a real two-node Ray cluster on this host (ray.cluster_utils.Cluster, 2 nodes x
8 fake HPU, 2 CPU each): disjoint cards, whole nodes for multi-node units, release when the
holder raises or is interrupted, and removal of a SIGKILLed holder's group. One cluster for the
module (~15 s to start; tests/integration/conftest.py).
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from harness import cluster
from harness.cluster_layout import ClusterError
from harness.cluster_layout import Placement
from harness.collectives.launch import run_on_nodes
from harness.matrix import load_matrix
from harness.process import Command
from harness.workplan.figures import UnitRecord
from harness.workplan.figures import overlaps
from harness.workplan.figures import run_figures
from harness.workplan.leased_cluster import LeasedCluster
from harness.workplan.leases import LeaseError
from harness.workplan.leases import LeaseManager
from harness.workplan.leases import alive_nodes
from harness.workplan.plan import build_plan
from harness.workplan.scheduler import Assignment
from harness.workplan.scheduler import Scheduler
from harness.workplan.units import Demand
from harness.workplan.units import UnitKind
from harness.workplan.units import WorkUnit

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parent.parent.parent


def unit(name: str, nodes: int, cards: int) -> WorkUnit:
    return WorkUnit(name, UnitKind.SERVING, (name,), (), Demand(nodes, cards, nodes > 1))


def group_state(name: str) -> str | None:
    from ray.util.placement_group import placement_group_table

    states = [v["state"] for v in placement_group_table().values() if v["name"] == name]
    return states[-1] if states else None


def wait_removed(name: str, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while group_state(name) not in (None, "REMOVED"):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_concurrent_leases_get_disjoint_cards_on_the_pinned_node(
    ray_cluster: cluster.RayCluster,
) -> None:
    mgr = LeaseManager("run-a", "HPU", timeout_s=20)
    node0 = alive_nodes("HPU")[0]["NodeID"]
    with mgr.lease(unit("u1", 1, 3), nodes=[0]) as a, mgr.lease(unit("u2", 1, 3), nodes=[0]) as b:
        assert a.nodes[0].node_id == b.nodes[0].node_id == node0
        assert len(a.nodes[0].devices) == len(b.nodes[0].devices) == 3
        assert not set(a.nodes[0].devices) & set(b.nodes[0].devices)
        assert a.env()["HABANA_VISIBLE_MODULES"] == ",".join(map(str, a.nodes[0].devices))
        # the node has 2 cards left: a unit wanting 8 there is refused, naming the unit
        quick = LeaseManager("run-a", "HPU", timeout_s=3)
        with (
            pytest.raises(LeaseError, match="unit u3: Ray did not place"),
            quick.lease(unit("u3", 1, 8), nodes=[0]),
        ):
            pass
        assert wait_removed(f"harness-lease:run-a:{mgr.host}:{os.getpid()}:u3")
    assert wait_removed(a.name) and wait_removed(b.name)


def test_multi_node_lease_takes_whole_nodes(ray_cluster: cluster.RayCluster) -> None:
    mgr = LeaseManager("run-b", "HPU", timeout_s=20)
    with mgr.lease(unit("wide", 2, 8)) as lease:
        assert len({n.node_id for n in lease.nodes}) == 2
        assert [n.devices for n in lease.nodes] == [tuple(range(8))] * 2
        quick = LeaseManager("run-b", "HPU", timeout_s=3)
        with pytest.raises(LeaseError, match="unit one-card"), quick.lease(unit("one-card", 1, 1)):
            pass  # nothing left anywhere
    assert wait_removed(lease.name)


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_lease_is_released_when_its_holder_raises(
    ray_cluster: cluster.RayCluster, error: type[BaseException]
) -> None:
    mgr = LeaseManager("run-c", "HPU", timeout_s=20)
    names = []
    with pytest.raises(error), mgr.lease(unit("raiser", 2, 8)) as lease:
        names.append(lease.name)
        raise error("stage failed")
    assert wait_removed(names[0])
    with mgr.lease(unit("after", 2, 8)) as again:  # the whole cluster is free again
        assert len(again.nodes) == 2


def test_cpu_leases_book_disjoint_cores(ray_cluster: cluster.RayCluster, tmp_path: Path) -> None:
    mgr = LeaseManager("run-d", "CPU", book=tmp_path / "cores.json", timeout_s=20)
    with mgr.lease(unit("c1", 1, 1), nodes=[1]) as a, mgr.lease(unit("c2", 1, 1), nodes=[1]) as b:
        assert {a.nodes[0].devices, b.nodes[0].devices} == {(0,), (1,)}
        assert {a.env()["VLLM_CPU_OMP_THREADS_BIND"], b.env()["VLLM_CPU_OMP_THREADS_BIND"]} == {
            "0",
            "1",
        }
    with mgr.lease(unit("c3", 1, 2), nodes=[1]) as c:  # their cores were returned
        assert c.nodes[0].devices == (0, 1)


HOLDER = textwrap.dedent(
    """
    import sys, time, ray
    from harness.workplan.leases import LeaseManager
    from harness.workplan.units import Demand, UnitKind, WorkUnit
    ray.init(address=sys.argv[1], log_to_driver=False)
    unit = WorkUnit("held", UnitKind.SERVING, ("held",), (), Demand(1, 8))
    mgr = LeaseManager("run-e", "HPU", timeout_s=60, detached=sys.argv[2] == "detached")
    with mgr.lease(unit, nodes=[1]) as lease:
        print(lease.name, flush=True)
        time.sleep(600)
    """
)


@pytest.mark.parametrize("lifetime", ["driver", "detached"])
def test_a_killed_holders_group_is_removed(ray_cluster: cluster.RayCluster, lifetime: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, ray_cluster.address, lifetime],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its own process group: killed by its id only
    )
    try:
        assert holder.stdout is not None
        name = holder.stdout.readline().strip()
        assert name.startswith("harness-lease:run-e:") and group_state(name) == "CREATED"
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
    removed = LeaseManager("run-f", "HPU").remove_leftovers()
    if lifetime == "detached":  # Ray keeps a detached group: the cleanup must remove it
        assert removed == [name]
    # a driver's group is removed by Ray when the driver dies, or by the cleanup if still there
    print(f"{lifetime}: removed by the cleanup: {removed or 'nothing (Ray had removed it)'}")
    assert wait_removed(name)
    mgr = LeaseManager("run-f", "HPU", timeout_s=20)
    with mgr.lease(unit("reuse", 1, 8), nodes=[1]) as lease:  # its cards are free again
        assert lease.nodes[0].devices == tuple(range(8))


def test_a_stage_reserving_inside_a_lease_gets_the_leases_bundles(
    ray_cluster: cluster.RayCluster, tmp_path: Path
) -> None:
    """The collectives runner's own `reserve` runs in the node phase's lease, once per card."""
    mgr = LeaseManager("run-g", "HPU", timeout_s=20)
    with mgr.lease(unit("node/g2/n2/0-1", 2, 8)) as lease:
        view = LeasedCluster(ray_cluster, lease)
        commands = [Command(("sh", "-c", "echo $HABANA_VISIBLE_MODULES"), node=i) for i in range(2)]
        outputs = run_on_nodes(commands, view, Placement("HPU", 8, 2), tmp_path, {}, 60)
        assert [o.returncode for o in outputs] == [0, 0]
        logs = [o.log_path.read_text(encoding="utf-8") for o in outputs]
        assert all("0,1,2,3,4,5,6,7" in log for log in logs)
        too_wide = Placement("HPU", 8, 3)
        with (
            pytest.raises(ClusterError, match="unit node/g2/n2/0-1 holds 2 node"),
            view.reserve(too_wide),
        ):
            pass
    assert wait_removed(lease.name)


def test_a_lease_hands_its_cards_to_a_server_that_places_its_own_workers(
    ray_cluster: cluster.RayCluster,
) -> None:
    """vLLM's Ray executor makes its own placement group for a multi-node cell."""
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.placement_group import remove_placement_group

    mgr = LeaseManager("run-h", "HPU", timeout_s=20)
    with mgr.lease(unit("serving/wide", 2, 8)) as lease:
        mgr.hand_over(lease)
        assert wait_removed(lease.name)
        server_group = placement_group([{"HPU": 1}] * 16, strategy="PACK")
        try:
            assert ray.get(server_group.ready(), timeout=20) is not None
        finally:
            remove_placement_group(server_group)
    assert group_state(lease.name) == "REMOVED"  # and leaving the block did not fail


def test_the_schedule_run_on_ray_holds_disjoint_real_cards(ray_cluster: cluster.RayCluster) -> None:
    """nightly-g2's plan driven by the Scheduler, each unit holding a real lease on its
    scheduled nodes for a short while: the cards Ray gave never overlap in time, multi-node
    units and node phases get whole nodes, calibrations end before their dependants start,
    node phases never overlap a serving phase on the same node."""
    plan = build_plan(load_matrix("nightly-g2").cells, 2, 8)
    sched = Scheduler(plan, lambda u: 0.2 + 0.1 * len(u.stages))
    mgr = LeaseManager("run-i", "HPU", timeout_s=30)
    ids = [n["NodeID"] for n in alive_nodes("HPU")]
    done: queue.Queue[tuple[str, UnitRecord | BaseException]] = queue.Queue()

    def hold(found: Assignment) -> None:
        try:
            with mgr.lease(found.unit, nodes=found.nodes) as lease:
                start = time.monotonic()
                time.sleep(sched.estimate(found.unit))
                cards = tuple((ids.index(n.node_id), d) for n in lease.nodes for d in n.devices)
                record = UnitRecord(found.unit.id, start, time.monotonic(), cards)
            done.put((found.unit.id, record))
        except BaseException as exc:  # reported to the test thread
            done.put((found.unit.id, exc))

    records: dict[str, UnitRecord] = {}
    threads = []
    while not sched.finished:
        while (found := sched.start_next(time.monotonic())) is not None:
            threads.append(threading.Thread(target=hold, args=(found,), daemon=True))
            threads[-1].start()
        unit_id, outcome = done.get(timeout=120)
        assert isinstance(outcome, UnitRecord), outcome
        records[unit_id] = outcome
        sched.finish(unit_id)
    for t in threads:
        t.join(timeout=30)
    assert set(records) == {u.id for u in plan.units}
    assert overlaps(list(records.values())) == []
    for unit in plan.units:
        rec = records[unit.id]
        if unit.demand.whole_nodes:
            assert len(rec.cards) == 8 * unit.demand.nodes
        for dep in unit.after:
            assert records[dep].end <= rec.start
    for phase in (records[u.id] for u in plan.units if u.kind is UnitKind.NODE):
        for u in plan.units:
            if u.kind is UnitKind.SERVING:
                s = records[u.id]
                shared = {n for n, _ in phase.cards} & {n for n, _ in s.cards}
                assert not shared or phase.end <= s.start or s.end <= phase.start
    figs = run_figures(list(records.values()), 16)
    print(
        f"on Ray: {len(records)} units, makespan {figs.makespan_s:.1f} s, sum of unit times "
        f"{figs.unit_seconds:.1f} s, utilisation {100 * figs.utilisation:.0f}%"
    )
