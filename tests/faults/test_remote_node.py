"""`pytest suites -n 2 --ray-address` on a two-node Ray cluster whose cards are on the other
node, as on a cluster whose Ray head is a login node without accelerators.

The test starts a real two-node Ray cluster on this host (ray.cluster_utils.Cluster): a head
with no CPU to lease, where the harness's drivers attach (Ray prefers the head on its host), and
a worker node with two. smoke-cpu's two TP1 tiny-llama cells (BF16 and FP8) run on it with two
workers, so every unit runs on the other node: its preflight probes that node, the collectives,
the INC calibration and the vLLM servers start there under keepers (harness.workplan.node_site),
each server binds that node's address, lm-eval connects to it from here, and the logs are
mirrored into the run directory. Nothing is left on either node afterwards, nor when the run
gets Ctrl-C while lm-eval runs here against a server there.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faultkit import BF16
from faultkit import FP8
from faultkit import HarnessRun
from faultkit import Ledger
from faultkit import own_traceback
from faultkit import smoke_matrix

from harness.workplan.figures import UnitRecord
from harness.workplan.figures import overlaps

pytestmark = [pytest.mark.integration, pytest.mark.faults]

STAGES = "preflight,collectives,calibration,serving,accuracy"
LMEVAL_UP = "Selected Tasks"


def worker_label(cluster: Any) -> str:
    """The "ip/node-id" of the node with the CPUs (not the head)."""
    (node,) = [n for n in cluster.list_all_nodes() if n is not cluster.head_node]
    return f"{node.node_ip_address}/{node.node_id[:8]}"


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[Any]:
    """A head without CPUs to lease and a node with two (Ray's own test cluster)."""
    from ray.cluster_utils import Cluster

    saved = os.environ.pop("RAY_ADDRESS", None)
    args = {"object_store_memory": 80 * 2**20}
    started = Cluster(initialize_head=True, shutdown_at_exit=True,
                      head_node_args={**args, "num_cpus": 0, "include_dashboard": False})
    try:
        started.add_node(**args, num_cpus=2)
        started.wait_for_nodes()
        yield started
    finally:
        started.shutdown()
        if saved is not None:
            os.environ["RAY_ADDRESS"] = saved


def test_units_leased_on_the_other_node_run_there_and_are_measured_from_here(
    tmp_path: Path, harness: Any, ledger: Ledger, two_nodes: Any
) -> None:
    matrix = smoke_matrix(tmp_path / "smoke.yaml", accuracy={"limit": 8})
    run: HarnessRun = harness(matrix, "-n", "2", "--ray-address", two_nodes.address,
                              cells="tiny-llama/*", stages=STAGES)
    run.every_file = True
    assert run.finish(900) == 0, run.output()[-4000:]
    records = run.records()
    end = records[-1]
    assert end["kind"] == "end" and end["status"] == "completed", end
    (shape,) = [r for r in records if r["kind"] == "cluster"]
    assert shape["address"] == two_nodes.address  # joined, not started
    assert shape["nodes"] == 1 and shape["unused_nodes"] == {}, shape  # the head has no CPU
    label = worker_label(two_nodes)
    assert [f"{two_nodes.head_node.node_ip_address}/{n[:8]}" for n in shape["node_ids"]] == [label]

    units = {r["unit"]: UnitRecord.from_dict(r) for r in records if r["kind"] == "unit"}
    assert overlaps(list(units.values())) == []
    assert {u.kind for u in units.values()} == {"node", "calibration", "serving"}, units
    assert {u.ran_on for u in units.values()} == {label}  # every unit, on the other node
    assert f"| {label} |" in (run.run_dir / "summary.md").read_text()

    stages = {(r["cell"], r["stage"]): r for r in records if r["kind"] == "stage"}
    assert all(r["status"] == "passed" for r in stages.values()), {
        k: (r["status"], r.get("message", "")[:300]) for k, r in stages.items()}
    for cell in (BF16, FP8):
        assert stages[(cell, "serving")]["metrics"]["node"] == label
        assert stages[(cell, "accuracy")]["metrics"]["exact_match_strict"] is not None
        # the server's output came over: vLLM's own start-up lines, in the run directory
        log = run.run_dir / stages[(cell, "serving")]["artifacts"]["server_log"]
        assert "Application startup complete" in log.read_text()
    checks = json.loads((run.run_dir / stages[(BF16, "preflight")]["artifacts"]["checks"])
                        .read_text())
    assert label in json.dumps(checks)  # the probe ran on the worker node, named by it
    assert not ledger.count_lost(run)
    run.none_left(ledger)  # its groups on the other node were recorded with their node


def test_ctrl_c_while_a_server_on_the_other_node_is_measured_leaves_nothing_there(
    tmp_path: Path, harness: Any, ledger: Ledger, fault: Any, two_nodes: Any
) -> None:
    import signal

    matrix = smoke_matrix(tmp_path / "smoke.yaml", accuracy={"limit": 40})
    run: HarnessRun = harness(matrix, "-n", "2", "--ray-address", two_nodes.address,
                              cells=BF16, stages="serving,accuracy")
    run.every_file = True
    fault("SIGINT to a pytest -n 2 run while lm-eval measures a server on another Ray node")
    run.at_stage("lm_eval", LMEVAL_UP, timeout_s=400)
    run.poll_groups()
    label = worker_label(two_nodes)
    servers = [g for g in run.groups.values() if g.get("node") == label]
    assert servers, "the server's group on the other node was not recorded with its node"
    os.killpg(run.pid, signal.SIGINT)
    assert run.finish() == 2, run.output()[-3000:]
    assert not own_traceback(run.output()) or "KeyboardInterrupt" in run.output()
    end = run.records()[-1]
    assert end["kind"] == "end" and end["status"] == "interrupted", end
    assert not ledger.count_lost(run)
    run.none_left(ledger)  # the server on the other node too (its group is recorded)
