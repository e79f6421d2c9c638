"""Gaudi node checks on the facts the preflight probe gathered (one dict per node).

Each takes the facts of every node the cell spans and returns a Check whose hint quotes the seed
that fixes it; they read recorded facts only, so tests run them on fixtures.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.backends.base import Check
from harness.backends.base import CheckStatus
from harness.cell import Cell

Facts = Mapping[str, dict[str, Any]]  # the probe's facts by node ("local" when Ray is not used)

NIC_SCRIPT = "/opt/habanalabs/qual/{gen}/bin/manage_network_ifs.sh"
GEN_DIR = {"g2": "gaudi2", "g3": "gaudi3"}


def nic_fix(device: str) -> str:
    gen = GEN_DIR.get(device, "gaudi2")
    return (
        f"on the host, not inside the container: cd /opt/habanalabs/qual/{gen}/bin && "
        "./manage_network_ifs.sh --down && ./manage_network_ifs.sh --up; give the NICs a "
        "minute and check --status again (seed 000 step 3)"
    )


def parse_nic_status(output: str) -> tuple[int, int]:
    """(ports up, ports down) in `manage_network_ifs.sh --status`: a port's line says up or
    down (qualification scripts count down ports with `--status | grep down | wc -l`)."""
    down = sum(1 for line in output.splitlines() if re.search(r"\bdown\b", line, re.I))
    up = sum(
        1
        for line in output.splitlines()
        if re.search(r"\bup\b", line, re.I) and not re.search(r"\bdown\b", line, re.I)
    )
    return up, down


def command_output(facts: Mapping[str, Any], name: str) -> tuple[int | None, str]:
    got = facts.get("commands", {}).get(name, {})
    return got.get("rc"), got.get("out", "")


def per_node(nodes: Facts) -> list[tuple[str, dict[str, Any]]]:
    return list(nodes.items())


def required_env(names: list[str], nodes: Facts) -> list[Check]:
    """`preflight.required_env`: set on every node. The probe reports each required name as set
    or not (`env_set`); it used to gather a fixed list, so any other name read as "not set"."""
    checks = []
    for var in names:
        unset = [
            n
            for n, f in per_node(nodes)
            if not f.get("env_set", {}).get(var, bool(f.get("env", {}).get(var)))
        ]
        checks.append(
            Check(
                f"env.{var}",
                CheckStatus.FAIL if unset else CheckStatus.PASS,
                f"not set on {', '.join(unset)}" if unset else "set on every node",
                f"export {var}=... on every node before `ray start`" if unset else "",
            )
        )
    return checks


def device_health(nodes: Facts) -> Check:
    bad, unknown = [], []
    for node, facts in per_node(nodes):
        rc, out = command_output(facts, "device_status")
        states = [s.strip().lower() for s in out.splitlines() if s.strip()]
        if rc != 0 or not states:
            unknown.append(node)
        bad += [f"{node}: accel{i} {s}" for i, s in enumerate(states) if s != "operational"]
    if bad:
        return Check(
            "devices.health",
            CheckStatus.FAIL,
            "; ".join(bad),
            "a device that is not operational needs a driver reload or a reboot of that node; "
            "see `hl-smi -q` and dmesg",
        )
    if unknown:
        return Check(
            "devices.health",
            CheckStatus.WARN,
            f"device status not readable on {', '.join(unknown)} "
            "(/sys/class/accel/accel*/device/status)",
        )
    return Check("devices.health", CheckStatus.PASS, "every device is operational")


def nic_ports(cell: Cell, nodes: Facts) -> Check:
    down: list[str] = []
    missing: list[str] = []
    ups: dict[str, object] = {}
    for node, facts in per_node(nodes):
        rc, out = command_output(facts, "nic")
        if rc is None or rc == 127 or "No such file" in out:
            missing.append(node)
            continue
        up, n_down = parse_nic_status(out)
        ups[node] = up
        if n_down:
            down.append(f"{node}: {n_down} port(s) down, {up} up")
    if down:
        return Check("nic.ports", CheckStatus.FAIL, "; ".join(down), nic_fix(cell.device), ups)
    if missing:
        script = NIC_SCRIPT.format(gen=GEN_DIR[cell.device])
        return Check(
            "nic.ports",
            CheckStatus.WARN,
            f"{script} not found on {', '.join(missing)} (it runs on the host, not in the "
            "container)",
            f"on the host: {script} --status; all ports must be up. {nic_fix(cell.device)}",
        )
    return Check("nic.ports", CheckStatus.PASS, f"all ports up ({ups})", "", ups)


def multi_node_env(nodes: Facts) -> list[Check]:
    """GLOO_/HCCL_SOCKET_IFNAME name an interface of each node; lazy collectives on."""
    checks = []
    for var in ("GLOO_SOCKET_IFNAME", "HCCL_SOCKET_IFNAME"):
        problems = []
        for node, facts in per_node(nodes):
            value = facts.get("env", {}).get(var)
            if not value:
                problems.append(f"{node}: not set")
            elif value not in facts.get("interfaces", []):
                problems.append(f"{node}: {value} is not an interface there")
        checks.append(
            Check(
                f"env.{var}",
                CheckStatus.FAIL if problems else CheckStatus.PASS,
                "; ".join(problems) or "set to an interface of every node",
                f"export {var}=<interface of the node's IP, from `ip a`> on every node before "
                "`ray start` (seed 000 step 4; seed 003 set_head_node.sh/set_worker_node.sh)"
                if problems
                else "",
            )
        )
    values = {n: f.get("env", {}).get("PT_HPU_ENABLE_LAZY_COLLECTIVES") for n, f in per_node(nodes)}
    wrong = {n: v for n, v in values.items() if v and v.lower() not in ("true", "1")}
    unset = [n for n, v in values.items() if not v]
    var = "PT_HPU_ENABLE_LAZY_COLLECTIVES"
    if wrong:
        checks.append(
            Check(f"env.{var}", CheckStatus.FAIL, f"set to {wrong}", f"export {var}=true")
        )
    elif unset:
        checks.append(
            Check(
                f"env.{var}",
                CheckStatus.WARN,
                f"not set on {', '.join(unset)}; the harness sets it for the commands it starts",
                f"export {var}=true before `ray start` so Ray workers inherit it",
            )
        )
    else:
        checks.append(Check(f"env.{var}", CheckStatus.PASS, "true on every node"))
    return checks


def quant_config_buffer(nodes: Facts) -> Check:
    """Multi-node calibration needs QUANT_CONFIG naming a file on shared storage (seed 000)."""
    missing = [n for n, f in per_node(nodes) if not f.get("paths", {}).get("$QUANT_CONFIG")]
    if not missing:
        return Check("quant_config.buffer", CheckStatus.PASS, "QUANT_CONFIG exists on every node")
    return Check(
        "quant_config.buffer",
        CheckStatus.FAIL,
        f"QUANT_CONFIG is unset or names a missing file on {', '.join(missing)}",
        "on NFS shared by all nodes: touch <nfs>/vllm-gaudi/calibration/quant_config_buffer.json "
        "and export QUANT_CONFIG=<that path> on every node (seed 000 steps 2 and 4)",
    )


def cpu_governor(cell: Cell, nodes: Facts) -> Check:
    want = cell.settings.preflight.cpu_governor
    if want is None:
        return Check("cpu.governor", CheckStatus.SKIP, "not checked (preflight.cpu_governor)")
    other = {n: f.get("cpu_governor") for n, f in per_node(nodes)}
    off = {n: g for n, g in other.items() if g != want}
    if not off:
        return Check("cpu.governor", CheckStatus.PASS, f"{want} on every node")
    return Check(
        "cpu.governor",
        CheckStatus.WARN,
        f"scaling governor is {off}, not {want}",
        f'echo "{want}" | sudo tee /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor '
        "(seed 003), and the BIOS in performance mode",
    )


def converted_weights(cell: Cell) -> Check:
    """DeepSeek FP8 weights on Gaudi2 must be the convert_for_g2.py output (seed 003)."""
    name = "weights.g2_converted"
    path = cell.model.path
    if not path:
        return Check(
            name,
            CheckStatus.FAIL,
            f"{cell.model.name} on Gaudi2 is served from hub weights ({cell.model.hub_id}), "
            "which are not converted for Gaudi2's FP8 range",
            "python scripts/convert_for_g2.py -i /data/hf_models/DeepSeek-R1 "
            "-o /data/hf_models/DeepSeek-R1-G2 (vllm-fork deepseek_r1 branch), then set the "
            "model's path to the output",
        )
    root = Path(path)
    source = str(root).removesuffix("-G2")
    hint = (
        f"python scripts/convert_for_g2.py -i {source} -o {root} (no trailing '/'; ~15 min, "
        "seed 003); it is done when the last shard is saved"
    )
    index = root / "model.safetensors.index.json"
    if not (root / "config.json").is_file() or not index.is_file():
        return Check(name, CheckStatus.FAIL, f"{root}: no config.json/index: not converted", hint)
    shards = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
    absent = [s for s in shards if not (root / s).is_file()]
    if absent:
        return Check(
            name,
            CheckStatus.FAIL,
            f"{root}: {len(absent)} of {len(shards)} shards missing (first {absent[0]}): "
            "the conversion did not finish",
            hint,
        )
    if not root.name.upper().endswith("G2"):
        return Check(
            name,
            CheckStatus.WARN,
            f"{root}: all {len(shards)} shards present, but the name does not say it is the "
            "convert_for_g2.py output",
            hint,
        )
    return Check(name, CheckStatus.PASS, f"{root}: {len(shards)} converted shards")
