"""Preflight checks on per-node facts shaped like the probe's: each says what to do."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from harness.backends.base import Check
from harness.backends.base import CheckStatus
from harness.backends.base import Inventory
from harness.backends.cpu import CpuBackend
from harness.backends.gaudi import GaudiBackend
from harness.backends.gaudi import node_checks
from harness.cell import Cell
from harness.cell import Stage
from harness.errors import StageError
from harness.matrix import load_matrix
from harness.stages import StageContext
from harness.stages import preflight as stage

# `hl-smi -Q index,name,bus_id,driver_version -f csv,noheader` on an 8 x HL-225 node
HL_SMI = "\n".join(f"{i}, HL-225, 0000:{16 * i + 16:02x}:00.0, 1.20.1-97ec1a4" for i in range(8))


@pytest.fixture(autouse=True)
def _no_cluster_env(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # a configured cluster would be used


def node(ip: str = "10.0.0.1", **over) -> dict:
    facts = {
        "python": "3.10.12",
        "interfaces": ["eth0", "lo"],
        "cpu_governor": "performance",
        "env": {
            "GLOO_SOCKET_IFNAME": "eth0",
            "HCCL_SOCKET_IFNAME": "eth0",
            "PT_HPU_ENABLE_LAZY_COLLECTIVES": "true",
            "VLLM_HOST_IP": ip,
        },
        "packages": {"vllm": "0.6.3", "habana-torch-plugin": "1.20.1.97"},
        "modules": {"vllm": "/workspace/vllm-fork/vllm/__init__.py"},
        "paths": {"hccl_demo": True, "$QUANT_CONFIG": True, "fork.quant_config": True,
                  "fork.benchmark_serving": True},
        "commands": {
            "devices": {"rc": 0, "out": HL_SMI},
            "firmware": {"rc": 0, "out": "erom\n gaudi2 1.20.1-fw-57.2.1\n"},
            "device_status": {"rc": 0, "out": "operational\n" * 8},
            "nic": {
                "rc": 0,
                "out": "".join(f"hl{i} port {p} up\n" for i in range(8) for p in (0, 1)),
            },
        },
    }
    for key, value in over.items():
        facts[key] = {**facts[key], **value} if isinstance(value, dict) else value
    return facts


def probe(*nodes: dict) -> dict[str, dict]:
    """Facts by node, keyed like the Ray probe's ('ip/node-id')."""
    return {f"10.0.0.{i + 1}/node{i}": f for i, f in enumerate(nodes)}


def cell_of(matrix: str, cell_id: str) -> Cell:
    return next(c for c in load_matrix(matrix).cells if c.id == cell_id)


TWO_NODES = "deepseek-r1-0528/g2-n2/tp16-ep16/fp8-kv-fp8_inc"


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def test_healthy_two_node_facts_pass_every_gaudi_check():
    checks = by_name(GaudiBackend().preflight_checks(cell_of("deepseek-r1-multinode", TWO_NODES),
                                                     probe(node(), node("10.0.0.2"))))  # fmt: skip
    assert {n: c.status for n, c in checks.items() if c.status is not CheckStatus.PASS} == {
        "weights.g2_converted": CheckStatus.FAIL,  # /data/hf_models/... does not exist here
        "model.checkpoint": CheckStatus.WARN,  # nor its config.json: fp8 assumed, and said so
    }
    assert "10.0.0.1/node0: 8" in checks["devices"].message


def test_a_nic_port_down_fails_with_the_seed_down_up_fix():
    down = node(commands={"nic": {"rc": 0, "out": "hl0 port 0 up\nhl0 port 1 down\n"}})
    cell = cell_of("deepseek-r1-multinode", TWO_NODES)
    check = by_name(GaudiBackend().preflight_checks(cell, probe(node(), down)))["nic.ports"]
    assert check.status is CheckStatus.FAIL and "10.0.0.2/node1: 1 port(s) down" in check.message
    assert "cd /opt/habanalabs/qual/gaudi2/bin && ./manage_network_ifs.sh --down && " in check.hint
    assert "./manage_network_ifs.sh --up" in check.hint and "seed 000 step 3" in check.hint


def test_nic_script_missing_inside_a_container_is_a_warning_that_says_run_it_on_the_host():
    gone = node(commands={"nic": {"rc": 127, "out": "sh: 1: manage_network_ifs.sh: not found"}})
    cell = cell_of("nightly-g3", "llama-3.1-8b/g3/tp1/bf16-kv-auto")
    check = node_checks.nic_ports(cell, probe(gone))
    assert check.status is CheckStatus.WARN
    assert "/opt/habanalabs/qual/gaudi3/bin/manage_network_ifs.sh not found" in check.message


@pytest.mark.parametrize(
    "env, expect",
    [
        ({"GLOO_SOCKET_IFNAME": None}, "10.0.0.2/node1: not set"),
        ({"GLOO_SOCKET_IFNAME": "enx6c1ff7012f87"}, "enx6c1ff7012f87 is not an interface there"),
    ],
    ids=["unset", "no-such-interface"],
)
def test_multi_node_cells_need_gloo_socket_ifname_naming_an_interface(env, expect):
    checks = by_name(node_checks.multi_node_env(probe(node(), node("10.0.0.2", env=env))))
    check = checks["env.GLOO_SOCKET_IFNAME"]
    assert check.status is CheckStatus.FAIL and expect in check.message
    assert "export GLOO_SOCKET_IFNAME=" in check.hint and "seed 000 step 4" in check.hint
    assert checks["env.HCCL_SOCKET_IFNAME"].status is CheckStatus.PASS


def test_lazy_collectives_unset_warns_and_a_false_value_fails():
    unset = node_checks.multi_node_env(probe(node(env={"PT_HPU_ENABLE_LAZY_COLLECTIVES": None})))
    assert by_name(unset)["env.PT_HPU_ENABLE_LAZY_COLLECTIVES"].status is CheckStatus.WARN
    wrong = node_checks.multi_node_env(probe(node(env={"PT_HPU_ENABLE_LAZY_COLLECTIVES": "false"})))
    assert by_name(wrong)["env.PT_HPU_ENABLE_LAZY_COLLECTIVES"].status is CheckStatus.FAIL


def test_tp16_calibration_of_a_tp8_cell_needs_the_quant_config_buffer_on_every_node():
    cell = cell_of("nightly-g2", "llama-3.1-405b/g2/tp8/fp8-kv-fp8_inc")
    missing = node("10.0.0.2", paths={"$QUANT_CONFIG": False})
    check = by_name(GaudiBackend().preflight_checks(cell, probe(node(), missing)))[
        "quant_config.buffer"
    ]
    assert check.status is CheckStatus.FAIL and "10.0.0.2/node1" in check.message
    assert "touch <nfs>/vllm-gaudi/calibration/quant_config_buffer.json" in check.hint
    bf16 = cell_of("nightly-g2", "llama-3.1-8b/g2/tp1/bf16-kv-auto")
    names = by_name(GaudiBackend().preflight_checks(bf16, probe(node())))
    assert "quant_config.buffer" not in names and "env.GLOO_SOCKET_IFNAME" not in names


def test_missing_devices_and_the_wrong_generation_fail_on_that_node():
    seven = node(commands={"devices": {"rc": 0, "out": "\n".join(HL_SMI.splitlines()[:7])}})
    g3 = node(commands={"devices": {"rc": 0, "out": HL_SMI.replace("HL-225", "HL-325L")}})
    cell = cell_of("deepseek-r1-multinode", TWO_NODES)
    check = GaudiBackend()._devices(cell, probe(seven, g3))
    assert check.status is CheckStatus.FAIL
    assert "10.0.0.1/node0: 7 device(s), the cell needs 8" in check.message
    assert "10.0.0.2/node1: ['g3'] devices, the cell is g2" in check.message


def test_this_host_is_counted_with_discovery_when_no_ray_is_used():
    backend = GaudiBackend()
    backend._inventory = Inventory("g2", 8, "8 x HL-225 (pyhlml)")
    cell = cell_of("nightly-g2", "deepseek-r1-0528/g2/tp8-ep8/fp8-kv-auto")
    assert backend._devices(cell, {"local": node()}).status is CheckStatus.PASS
    backend._inventory = Inventory(None, 0, missing_reason="pyhlml could not initialise")
    check = backend._devices(cell, {"local": node()})
    assert check.status is CheckStatus.FAIL and "pyhlml could not initialise" in check.message


def test_a_device_that_is_not_operational_fails_health():
    sick = node(commands={"device_status": {"rc": 0, "out": "operational\nneeds reset\n"}})
    check = node_checks.device_health(probe(sick))
    assert check.status is CheckStatus.FAIL and "accel1 needs reset" in check.message


def test_vllm_missing_on_a_ray_worker_fails_with_the_seed_pythonpath_fix():
    worker = node("10.0.0.2", modules={"vllm": None})
    check = stage.vllm_on_workers(stage.NodeProbe(probe(node(), worker), via_ray=True), None)
    assert check.status is CheckStatus.FAIL and "No module named 'vllm'" in check.message
    assert check.hint.startswith(
        "on those nodes: echo 'PYTHONPATH=$PYTHONPATH:/workspace/vllm-fork' | tee -a "
        "/etc/environment && source /etc/environment"
    )


def test_nodes_that_disagree_fail_with_a_table_of_the_differences():
    old = node("10.0.0.2", python="3.10.4", packages={"vllm": "0.6.2"},
               commands={"devices": {"rc": 0, "out": HL_SMI.replace("1.20.1", "1.19.0")}})  # fmt: skip
    backend = GaudiBackend()
    facts = {n: stage.comparable(backend, f) for n, f in probe(node(), old).items()}
    check = stage.agreement_check(facts)
    assert check.status is CheckStatus.FAIL
    assert set(check.facts["differences"]) == {"driver", "package.vllm", "python"}
    assert check.facts["table"].splitlines()[:3] == [
        "| fact | 10.0.0.1/node0 | 10.0.0.2/node1 |",
        "|---|---|---|",
        "| driver | ['1.20.1-97ec1a4'] | ['1.19.0-97ec1a4'] |",
    ]
    assert "VLLM_HOST_IP" not in check.facts["table"]  # differs by design (seed 003)


def test_one_node_has_nothing_to_disagree_about():
    assert stage.agreement_check({"local": {"python": "3.11"}}).status is CheckStatus.PASS


def deepseek_on(path: str | None) -> Cell:
    cell = cell_of("nightly-g2", "deepseek-r1-0528/g2/tp8-ep8/fp8-kv-auto")
    model = dataclasses.replace(cell.model, path=path, hub_id="deepseek-ai/DeepSeek-R1-0528")
    return dataclasses.replace(cell, model=model)


def converted(root: Path, shards: int, present: int) -> None:
    root.mkdir(parents=True)
    (root / "config.json").write_text("{}")
    names = [f"model-{i:05d}-of-{shards:06d}.safetensors" for i in range(1, shards + 1)]
    index = {"weight_map": {f"w{i}": n for i, n in enumerate(names)}}
    (root / "model.safetensors.index.json").write_text(json.dumps(index))
    for name in names[:present]:
        (root / name).touch()


def test_deepseek_on_gaudi2_needs_every_converted_shard(tmp_path):
    converted(tmp_path / "DeepSeek-R1-0528-G2", 3, 3)
    assert node_checks.converted_weights(deepseek_on(str(tmp_path / "DeepSeek-R1-0528-G2"))).status is (
        CheckStatus.PASS
    )
    converted(tmp_path / "half-G2", 163, 100)
    check = node_checks.converted_weights(deepseek_on(str(tmp_path / "half-G2")))
    assert check.status is CheckStatus.FAIL and "63 of 163 shards missing" in check.message
    assert check.hint.startswith(f"python scripts/convert_for_g2.py -i {tmp_path / 'half'} -o ")


def test_deepseek_from_the_hub_on_gaudi2_is_refused_with_the_conversion_command():
    check = node_checks.converted_weights(deepseek_on(None))
    assert check.status is CheckStatus.FAIL and "not converted" in check.message
    assert "convert_for_g2.py -i /data/hf_models/DeepSeek-R1 -o" in check.hint


def test_the_stage_error_puts_names_and_fixes_first_and_every_hint_last():
    failed = [
        Check("memory", CheckStatus.FAIL, "1.0 GB available (need 4)", "stop other jobs"),
        Check("nic.ports", CheckStatus.FAIL, "node0: 1 port(s) down", "flip the ports"),
    ]
    err = stage.failure("m/g2/tp8/fp8-kv-auto", failed)
    first = str(err).splitlines()[0]
    assert first == (
        "m/g2/tp8/fp8-kv-auto [preflight]: 2 check(s) failed: memory (fix: stop other jobs); "
        "nic.ports (fix: flip the ports)"
    )
    assert str(err).splitlines()[-1] == "  hint: stop other jobs | flip the ports"
    assert err.hint == "stop other jobs | flip the ports"


def test_cpu_preflight_of_a_single_node_cell_passes_here_without_ray(tmp_path):
    cell = cell_of("smoke-cpu", "tiny-moe/cpu/tp2-ep2/fp8-kv-fp8")
    ctx = StageContext(cell, Stage.PREFLIGHT, CpuBackend({"workdir": str(tmp_path)}), tmp_path,
                       tmp_path)  # fmt: skip
    checks = by_name(stage.checks_for(ctx))
    assert checks["ray"].status is CheckStatus.SKIP and "no Ray needed" in checks["ray"].message
    assert checks["nodes.agree"].status is CheckStatus.PASS
    assert "vllm.on_workers" not in checks


def test_a_failed_cpu_check_fails_the_stage_with_its_fix_and_keeps_checks_json(tmp_path):
    cell = cell_of("smoke-cpu", "tiny-llama/cpu/tp1/bf16-kv-auto")
    pre = cell.settings.preflight.model_copy(update={"min_memory_gb": 1e9})
    cell = dataclasses.replace(cell, settings=cell.settings.model_copy(update={"preflight": pre}))
    ctx = StageContext(cell, Stage.PREFLIGHT, CpuBackend({"workdir": str(tmp_path)}), tmp_path,
                       tmp_path)  # fmt: skip
    with pytest.raises(StageError, match=r"\[preflight\]: 1 check\(s\) failed: memory \(fix: stop"):
        stage.run(ctx)
    saved = json.loads((tmp_path / "checks.json").read_text())
    assert {c["name"]: c["status"] for c in saved}["memory"] == "fail"
    assert ctx.recorder.metrics["checks_fail"] == 1


def test_shared_facts_leave_out_the_env_that_may_differ_per_node():
    facts = {"python": "3.11.7", "env": {"VLLM_HOST_IP": "10.0.0.1", "PT_HPU_LAZY_MODE": "1"},
             "packages": {"vllm": "0.6"}, "modules": {"vllm": "/x/vllm/__init__.py"}}  # fmt: skip
    assert stage.shared_facts(facts, frozenset({"VLLM_HOST_IP"})) == {
        "python": "3.11.7",
        "env.PT_HPU_LAZY_MODE": "1",
        "package.vllm": "0.6",
        "module.vllm": True,
    }
