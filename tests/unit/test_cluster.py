"""Ray figures, placement and refusal messages, addresses, the seeds' `ray start` lines and the
per-node probe, without starting Ray (tests/integration/test_ray_cluster.py starts one)."""

from __future__ import annotations

import dataclasses
import pickle
import platform
import shlex
import subprocess
import sys

import pytest

from harness import cluster
from harness.cell import Cell
from harness.matrix import load_matrix

# seed 004, `ray status` on a 4-node GPU cluster, verbatim
SEED_RAY_STATUS = """\
======== Autoscaler status: 2024-07-23 09:19:52.787566 ========
Node status
---------------------------------------------------------------
Active:
 1 node_5d49b4192028cade9fcc36bf741baa374e6169db9d4aeeb264850668
 1 node_59308d679572cae0898f6db34114493561a510ae74f8d26e7e1bbba9
 1 node_4c0f7b67a5148571b04928b345c5d33b68bcd6d74596414422b81ded
 1 node_01021d1b6c25b1259b66865684ca5f03ae2735917bdda01a628aab67
Pending:
 (no pending nodes)
Recent failures:
 (no failures)

Resources
---------------------------------------------------------------
Usage:
 0.0/832.0 CPU
 32.0/32.0 GPU (32.0 used of 32.0 reserved in placement groups)
 0B/6.87TiB memory
 0B/38.91GiB object_store_memory

Demands:
 (no resource demands)
"""


def ray_node(ip: str, hpu_total: float, hpu_free: float, head: bool = False) -> dict:
    resources = {"CPU": 160.0, "HPU": hpu_total, f"node:{ip}": 1.0}
    if head:
        resources["node:__internal_head__"] = 1.0
    return {
        "NodeID": f"{ip.replace('.', '')}ffff",
        "Alive": True,
        "NodeManagerAddress": ip,
        "Resources": resources,
        "Available": {"CPU": 160.0, "HPU": hpu_free},
    }


def cell_of(matrix: str, cell_id: str) -> Cell:
    return next(c for c in load_matrix(matrix).cells if c.id == cell_id)


def test_seed_ray_status_output_gives_its_nodes_and_usage():
    figures = cluster.parse_ray_status(SEED_RAY_STATUS)
    assert len(figures.alive) == 4
    assert figures.total["GPU"] == 32.0 and figures.used["GPU"] == 32.0
    assert figures.total["CPU"] == 832.0 and figures.used["CPU"] == 0.0
    assert figures.total["memory"] == pytest.approx(6.87 * 2**40)
    assert figures.render() == "ray status: 4 active node(s); usage 32.0/32.0 GPU, 0.0/832.0 CPU"


def test_figures_from_ray_nodes_put_the_head_first_and_count_what_is_used():
    figures = cluster.figures_from_nodes(
        [ray_node("10.0.0.2", 8, 8), ray_node("10.0.0.1", 8, 0, head=True)]
    )
    assert [n.ip for n in figures.nodes] == ["10.0.0.1", "10.0.0.2"]
    assert figures.nodes[0].is_head and "node:10.0.0.1" not in figures.nodes[0].total
    assert figures.total["HPU"] == 16.0 and figures.used["HPU"] == 8.0
    assert "8.0/16.0 HPU" in figures.render()


def test_a_resource_missing_from_a_nodes_available_view_is_fully_used():
    held = ray_node("10.0.0.1", 8, 0)
    del held["Available"]["HPU"]  # what Ray reports once a placement group holds every HPU
    held["Available"]["HPU_group_0_a92f"] = 8.0
    figures = cluster.figures_from_nodes([held])
    assert figures.used["HPU"] == 8.0 and "HPU_group_0_a92f" not in figures.total


def test_a_16_hpu_cell_is_one_8_hpu_bundle_per_node_strict_spread():
    place = cluster.Placement("HPU", 8, 2)
    assert place.bundles == [{"HPU": 8}, {"HPU": 8}]
    assert place.strategy == "STRICT_SPREAD"
    assert cluster.Placement("HPU", 8, 1).strategy == "STRICT_PACK"
    two = cluster.figures_from_nodes([ray_node("10.0.0.1", 8, 8), ray_node("10.0.0.2", 8, 8)])
    assert cluster.fit_reason(place, two) is None


def test_a_cell_that_does_not_fit_is_refused_with_the_ray_status_figures():
    one = cluster.figures_from_nodes([ray_node("10.0.0.1", 8, 8, head=True)])
    reason = cluster.fit_reason(cluster.Placement("HPU", 8, 2), one)
    assert reason == (
        "needs 2 node(s) x 8 HPU = 16 HPU (STRICT_SPREAD, one bundle per node) but only 1 "
        "node(s) have 8 HPU free [10.0.0.1: 8/8]; ray status: 1 active node(s) (10.0.0.1); "
        "usage 0.0/8.0 HPU, 0.0/160.0 CPU"
    )


def test_sixteen_free_hpus_on_one_node_and_a_busy_one_do_not_make_two_nodes():
    busy = cluster.figures_from_nodes([ray_node("10.0.0.1", 16, 16), ray_node("10.0.0.2", 8, 4)])
    assert "only 1 node(s) have 8 HPU free" in cluster.fit_reason(
        cluster.Placement("HPU", 8, 2), busy
    )


@pytest.mark.parametrize(
    "matrix, cell_id, nodes",
    [
        ("nightly-g2", "llama-3.1-8b/g2/tp1/fp8-kv-fp8_inc", 1),
        ("nightly-g2", "llama-3.1-405b/g2/tp8/fp8-kv-fp8_inc", 2),  # calibrated at TP16
        ("deepseek-r1-multinode", "deepseek-r1-0528/g2-n2/tp16-ep16/fp8-kv-auto", 2),
        ("deepseek-r1-multinode", "deepseek-r1-0528/g2-n4/tp32-ep32/fp8-kv-fp8_inc", 4),
        ("nightly-g2", "llama-3.1-8b/g2/tp1/bf16-kv-auto", 1),
    ],
)
def test_nodes_needed_counts_a_wider_calibration(matrix, cell_id, nodes):
    assert cluster.nodes_needed(cell_of(matrix, cell_id), 8) == nodes


def test_ray_is_used_for_multi_node_work_a_configured_address_or_when_asked():
    single = cell_of("smoke-cpu", "tiny-llama/cpu/tp1/bf16-kv-auto")
    assert not cluster.uses_ray(single, 2, {})
    assert cluster.uses_ray(single, 2, {"RAY_ADDRESS": "10.0.0.1:6379"})
    pre = single.settings.preflight.model_copy(update={"use_ray": True})
    asked = dataclasses.replace(
        single, settings=single.settings.model_copy(update={"preflight": pre})
    )
    assert cluster.uses_ray(asked, 2, {})
    multi = cell_of("nightly-g2", "llama-3.1-405b/g2/tp8/fp8-kv-fp8_inc")
    assert cluster.uses_ray(multi, 8, {})


def test_head_ip_and_port_come_from_the_matrix_then_ray_address_then_vllm_host_ip():
    env = {"RAY_ADDRESS": "10.0.0.9:8850", "VLLM_HOST_IP": "10.0.0.7"}
    assert cluster.head_ip({"head_ip": "10.0.0.1"}, env) == "10.0.0.1"
    assert cluster.head_ip({"ray_address": "192.168.1.101:8850"}, env) == "192.168.1.101"
    assert cluster.head_ip({}, env) == "10.0.0.9"
    assert cluster.head_ip({}, {"VLLM_HOST_IP": "10.0.0.7"}) == "10.0.0.7"
    assert cluster.head_ip({}, {"RAY_ADDRESS": "auto"}) is None
    assert cluster.ray_port({}, env) == 8850 and cluster.ray_port({}, {}) == 6379


def test_ray_start_commands_are_the_seed_003_lines():
    head, worker, status = cluster.start_commands(2, "192.168.1.101", 8850)
    assert head.argv == tuple(
        shlex.split("ray start --head --node-ip-address=192.168.1.101 --port=8850")
    )
    assert worker.argv == tuple(shlex.split("ray start --address='192.168.1.101:8850'"))
    assert (head.node, worker.node, status.node) == (0, 1, 0) and status.argv == ("ray", "status")


def test_the_local_probe_reports_python_env_packages_commands_and_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("QUANT_CONFIG", str(tmp_path / "quant_config_buffer.json"))
    (tmp_path / "quant_config_buffer.json").touch()
    facts = cluster.local_facts(
        {
            "env": ["QUANT_CONFIG", "NOT_SET_ANYWHERE_42"],
            "env_paths": ["QUANT_CONFIG"],
            "packages": ["pytest", "no-such-dist-42"],
            "modules": ["json", "no_such_module_42"],
            "commands": {"echo": ["echo", "hi"], "missing": ["/no/such/tool-42"]},
            "paths": {"here": str(tmp_path), "gone": str(tmp_path / "gone")},
        }
    )
    assert facts["python"] == platform.python_version()
    assert facts["env"]["NOT_SET_ANYWHERE_42"] is None
    assert facts["packages"]["pytest"] and facts["packages"]["no-such-dist-42"] is None
    assert facts["modules"]["json"] and facts["modules"]["no_such_module_42"] is None
    assert facts["commands"]["echo"] == {"rc": 0, "out": "hi\n"}
    assert facts["commands"]["missing"]["rc"] is None
    assert facts["paths"] == {"here": True, "gone": False, "$QUANT_CONFIG": True}
    assert "lo" in facts["interfaces"]


def test_the_probe_ships_by_value_so_nodes_without_the_harness_can_run_it():
    from ray import cloudpickle

    payload = cloudpickle.dumps(cluster._facts_function())
    code = (
        "import pickle, sys; f = pickle.loads(sys.stdin.buffer.read()); "
        "print(f({'env': ['HOME']})['python'], 'harness' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], input=payload, capture_output=True, check=True, cwd="/"
    ).stdout.decode()
    assert out.split() == [platform.python_version(), "False"]
    assert pickle.loads(payload)({})["python"] == platform.python_version()
