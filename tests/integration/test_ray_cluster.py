"""A real two-node Ray cluster on this host (ray.cluster_utils.Cluster, fake HPUs): placement,
refusal, per-node facts through the preflight stage, gloo across nodes through Ray actors,
and teardown by the PIDs the harness started. One cluster for the module (~10-20 s to start).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import pytest

from harness import cluster
from harness.backends.cpu import CpuBackend
from harness.cell import Cell
from harness.cell import Stage
from harness.matrix import load_matrix
from harness.stages import StageContext
from harness.stages import collectives
from harness.stages import preflight

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def ray_cluster():
    saved = os.environ.pop("RAY_ADDRESS", None)
    started = cluster.shared({}, 2, {"CPU": 2, "HPU": 8}, can_start=True)
    yield started
    cluster.shutdown_shared()  # a no-op when the teardown test ran
    if saved is not None:
        os.environ["RAY_ADDRESS"] = saved


def two_node_cell() -> Cell:
    """The smoke TP1 cell spread over two (local) nodes: one rank per node."""
    cell = next(c for c in load_matrix("smoke-cpu").cells if c.id.startswith("tiny-llama/"))
    coll = cell.settings.collectives.model_copy(
        update={"sizes": ["1m"], "max_seconds_per_size": 0.3}
    )
    settings = cell.settings.model_copy(update={"collectives": coll})
    return dataclasses.replace(cell, nodes=2, settings=settings, gates={})


def context(stage: Stage, tmp_path) -> StageContext:
    backend = CpuBackend({"workdir": str(tmp_path)})
    return StageContext(two_node_cell(), stage, backend, tmp_path, tmp_path)


def hpus_used(ray_cluster: cluster.RayCluster, want: float, timeout_s: float = 15) -> bool:
    """Ray's per-node view catches up with a reservation asynchronously."""
    deadline = time.monotonic() + timeout_s
    while ray_cluster.figures().used.get("HPU") != want:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_a_16_hpu_cell_is_placed_over_the_two_8_hpu_nodes(ray_cluster):
    from ray.util import placement_group_table

    figures = ray_cluster.figures()
    assert len(figures.alive) == 2 and figures.total["HPU"] == 16.0
    with ray_cluster.reserve(cluster.Placement("HPU", 8, 2), timeout_s=60) as group:
        table = placement_group_table(group)
        assert table["strategy"] == "STRICT_SPREAD"
        assert len(set(table["bundles_to_node_id"].values())) == 2
        assert hpus_used(ray_cluster, 16.0)
        refused = pytest.raises(cluster.ClusterError, match=r"only 0 node\(s\) have 8 HPU free")
        with refused, ray_cluster.reserve(cluster.Placement("HPU", 8, 2), timeout_s=5):
            pass
    assert hpus_used(ray_cluster, 0.0)  # released with the group


def test_a_cell_that_does_not_fit_is_refused_with_the_ray_status_figures(ray_cluster):
    with (
        pytest.raises(cluster.ClusterError) as err,
        ray_cluster.reserve(cluster.Placement("HPU", 8, 3)),
    ):
        pass
    text = str(err.value)
    assert text.startswith("needs 3 node(s) x 8 HPU = 24 HPU (STRICT_SPREAD, one bundle per node)")
    assert "ray status: 2 active node(s)" in text and "usage 0.0/16.0 HPU" in text


def test_preflight_gathers_facts_on_each_node_through_ray(ray_cluster, tmp_path):
    import ray

    ctx = context(Stage.PREFLIGHT, tmp_path)
    preflight.run(ctx)
    checks = {c["name"]: c for c in json.loads((tmp_path / "checks.json").read_text())}
    assert (
        checks["ray"]["status"] == "pass" and "fits 2 node(s) x 2 CPU" in checks["ray"]["message"]
    )
    assert checks["vllm.on_workers"]["status"] == "pass"
    assert checks["nodes.agree"]["status"] == "pass"
    assert checks["nodes.agree"]["message"].startswith("2 nodes agree on ")
    facts = ray_cluster.node_facts({"env": ["RAY_TMPDIR"], "packages": ["ray"]})
    assert len(facts) == 2 and len({n.split("/")[1] for n in facts}) == 2
    assert all(f["packages"]["ray"] == ray.__version__ for f in facts.values())
    assert ctx.recorder.metrics["checks_fail"] == 0


def test_gloo_runs_one_command_per_node_in_ray_actors(ray_cluster, tmp_path):
    ctx = context(Stage.COLLECTIVES, tmp_path)
    cmds = ctx.backend.plan(ctx.cell, Stage.COLLECTIVES, tmp_path)
    assert [c.node for c in cmds] == [0, 1]
    assert all("--ranks_per_node" in c.argv and c.argv[c.argv.index("--nranks") + 1] == "2"
               for c in cmds)  # fmt: skip
    collectives.run(ctx)
    m = ctx.recorder.metrics
    assert m["nodes"] == 2 and m["nranks"] == 2 and m["data_verified"] is True
    assert m["busbw_gbps"] > 0
    assert "[gloo_bench] all_reduce nranks=2" in (tmp_path / "node0.log").read_text()


def test_teardown_stops_every_process_the_harness_started(ray_cluster):
    pids = ray_cluster.pids()
    assert {"raylet", "gcs_server"} <= set(pids) and len(pids["raylet"]) == 2
    assert cluster.shutdown_shared() == []
    for pid in (p for group in pids.values() for p in group):
        assert not cluster._alive(pid), f"{pid} still running"
    assert "RAY_TMPDIR" not in os.environ
