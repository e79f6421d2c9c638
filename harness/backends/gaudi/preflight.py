"""Gaudi preflight: devices and their health, NIC ports, env per cell type, the QUANT_CONFIG
buffer file, vLLM on the Ray workers, converted DeepSeek weights on Gaudi2, hccl_demo built.

One probe (harness.cluster) runs on every node, through pinned Ray tasks when the cell needs
Ray, else on this host; the checks below read its facts, so they are the same code for one
node or four and can be tested on recorded facts. Fix hints quote the seeds.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness import cluster
from harness.backends.base import Check
from harness.backends.base import CheckStatus
from harness.backends.gaudi.discovery import generation_of
from harness.cell import Cell
from harness.process import Command

Facts = Mapping[str, dict[str, Any]]  # the probe's facts by node ("local" when Ray is not used)

CARDS_PER_NODE = 8
GEN_DIR = {"g2": "gaudi2", "g3": "gaudi3"}
NIC_SCRIPT = "/opt/habanalabs/qual/{gen}/bin/manage_network_ifs.sh"
HL_SMI_DEVICES = ("hl-smi", "-Q", "index,name,bus_id,driver_version", "-f", "csv,noheader")
HL_SMI_FIRMWARE = ("hl-smi", "--fw-version")
DEVICE_STATUS = ("sh", "-c", "cat /sys/class/accel/accel*/device/status")
PACKAGES = (
    "habana-torch-plugin",
    "habana-pyhlml",
    "torch",
    "vllm",
    "vllm-hpu-extension",
    "neural-compressor-pt",
    "ray",
)
MODULES = ("vllm", "habana_frameworks", "neural_compressor")
NODE_ENV = (
    "GLOO_SOCKET_IFNAME",
    "HCCL_SOCKET_IFNAME",
    "PT_HPU_ENABLE_LAZY_COLLECTIVES",
    "QUANT_CONFIG",
    "PYTHONPATH",
    "VLLM_HOST_IP",
    "HABANA_VISIBLE_DEVICES",
    "PT_HPU_LAZY_MODE",
    "INC_MEASUREMENT_DUMP_PATH_PREFIX",
)
# seed 003: head and worker differ only in VLLM_HOST_IP, GLOO_SOCKET_IFNAME, HCCL_SOCKET_IFNAME
PER_NODE_ENV = frozenset({"VLLM_HOST_IP", "GLOO_SOCKET_IFNAME", "HCCL_SOCKET_IFNAME"})
_VERSION = re.compile(r"\b\d+\.\d+\.\d+(?:[-.][0-9A-Za-z]+)*\b")


def nic_fix(device: str) -> str:
    gen = GEN_DIR.get(device, "gaudi2")
    return (
        f"on the host, not inside the container: cd /opt/habanalabs/qual/{gen}/bin && "
        "./manage_network_ifs.sh --down && ./manage_network_ifs.sh --up; give the NICs a "
        "minute and check --status again (seed 000 step 3)"
    )


def parse_devices(output: str) -> list[dict[str, str]]:
    """`hl-smi -Q index,name,bus_id,driver_version -f csv,noheader`: one device a line."""
    rows = []
    for line in output.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 4 and parts[0].isdigit():
            rows.append(dict(zip(("index", "name", "bus_id", "driver"), parts, strict=True)))
    return rows


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


def firmware_versions(output: str) -> list[str]:
    """The version strings `hl-smi --fw-version` prints (compared across nodes)."""
    return sorted(set(_VERSION.findall(output)))


def _command(facts: dict[str, Any], name: str) -> tuple[int | None, str]:
    got = facts.get("commands", {}).get(name, {})
    return got.get("rc"), got.get("out", "")


def _per_node(nodes: Facts) -> list[tuple[str, dict[str, Any]]]:
    return list(nodes.items())


class GaudiPreflight:
    """Stage mixin of the backend; see harness/backends/base.py for the protocol."""

    stack_packages = PACKAGES
    ray_hint = cluster.RAY_START_HINT
    starts_local_ray = False  # the seeds' cluster is started by hand; the harness connects
    per_node_env = PER_NODE_ENV

    def ray_placement(self, cell: Cell, nodes: int | None = None) -> cluster.Placement:
        """One `{"HPU": 8}` bundle per node, STRICT_SPREAD (DESIGN: Ray and placement)."""
        return cluster.Placement(
            "HPU", CARDS_PER_NODE, nodes or cluster.nodes_needed(cell, CARDS_PER_NODE)
        )

    def ray_cluster(self, cell: Cell) -> cluster.RayCluster:
        """The cluster the seeds start by hand; the harness only connects to it."""
        place = self.ray_placement(cell, cell.nodes)
        return cluster.shared(cell.backend_options, place.nodes, place.bundles[0], can_start=False)

    def preflight_spec(self, cell: Cell) -> dict[str, Any]:
        """What the probe gathers on each node: hl-smi, NIC status, env, packages, paths."""
        coll = cell.settings.collectives
        commands = {
            "devices": list(HL_SMI_DEVICES),
            "firmware": list(HL_SMI_FIRMWARE),
            "device_status": list(DEVICE_STATUS),
        }
        if cell.settings.preflight.nic_check:
            commands["nic"] = [NIC_SCRIPT.format(gen=GEN_DIR[cell.device]), "--status"]
        paths = {}
        if cell.runs("collectives"):
            paths["hccl_demo"] = str(Path(coll.hccl_demo_dir) / "run_hccl_demo.py")
        if cell.model.path:
            paths["model"] = str(Path(cell.model.path) / "config.json")
        return {
            "env": list(NODE_ENV),
            "env_paths": ["QUANT_CONFIG"],
            "packages": list(PACKAGES),
            "modules": list(MODULES),
            "commands": commands,
            "paths": paths,
        }

    def plan_preflight(self, cell: Cell, workdir: Path) -> list[Command]:
        """What the probe runs on each node, and the Ray cluster it expects (seeds 000/003)."""
        spec, nodes = self.preflight_spec(cell), cluster.nodes_needed(cell, CARDS_PER_NODE)
        notes = {
            "devices": "device count, generation and driver (pyhlml first on this host)",
            "firmware": "firmware versions (must match on every node)",
            "device_status": "device health",
            "nic": "NIC ports, on the host, not in the container (seed 000 step 3)",
        }
        cmds = []
        for name, argv in spec["commands"].items():
            for node in range(nodes) if nodes > 1 else [None]:
                desc = notes[name] if node in (None, 0) else ""
                cmds.append(Command(tuple(argv), description=desc, node=node))
        if cluster.uses_ray(cell, CARDS_PER_NODE, os.environ):
            head = cluster.head_ip(cell.backend_options, os.environ)
            port = cluster.ray_port(cell.backend_options, os.environ)
            cmds += cluster.start_commands(nodes, head, port)
        return cmds

    def device_facts(self, facts: dict[str, Any]) -> dict[str, Any]:
        """Driver and firmware versions join python, packages and env in the comparison."""
        devices = parse_devices(_command(facts, "devices")[1])
        return {
            "driver": sorted({d["driver"] for d in devices}) or None,
            "firmware": firmware_versions(_command(facts, "firmware")[1]) or None,
        }

    def preflight_checks(self, cell: Cell, nodes: Facts) -> list[Check]:
        """Checks on the probe's facts of every node (the stage adds Ray and agreement)."""
        checks = [self._devices(cell, nodes), _health(nodes)]
        if cell.settings.preflight.nic_check:
            checks.append(_nics(cell, nodes))
        if cluster.nodes_needed(cell, CARDS_PER_NODE) > 1:
            checks += _multi_node_env(nodes)
        if _calibrates_across_nodes(cell):
            checks.append(_quant_config_buffer(nodes))
        if cell.runs("collectives"):
            checks.append(_hccl_demo(cell, nodes))
        if cell.device == "g2" and cell.model.architecture == "deepseek_v3":
            checks.append(converted_weights(cell))
        checks.append(_governor(cell, nodes))
        for var in cell.settings.preflight.required_env:
            unset = [n for n, f in _per_node(nodes) if not f.get("env", {}).get(var)]
            checks.append(
                Check(
                    f"env.{var}",
                    CheckStatus.FAIL if unset else CheckStatus.PASS,
                    f"not set on {', '.join(unset)}" if unset else "set on every node",
                    f"export {var}=... on every node before `ray start`" if unset else "",
                )
            )
        return checks

    def _devices(self, cell: Cell, nodes: Facts) -> Check:
        """Count and generation per node: discovery (pyhlml, else hl-smi) here, hl-smi on nodes."""
        need = CARDS_PER_NODE if cell.nodes > 1 else cell.world_size
        problems, seen = [], {}
        for node, facts in _per_node(nodes):
            if node == "local":
                inv = self.inventory()  # type: ignore[attr-defined]
                if not inv.available:
                    problems.append(f"{node}: {inv.missing_reason}")
                    continue
                count, gens = inv.count, {inv.device}
            else:
                devices = parse_devices(_command(facts, "devices")[1])
                count, gens = len(devices), {generation_of(d["name"]) for d in devices}
            seen[node] = count
            if count < need:
                problems.append(f"{node}: {count} device(s), the cell needs {need}")
            if gens - {cell.device}:
                problems.append(
                    f"{node}: {sorted(map(str, gens))} devices, the cell is {cell.device}"
                )
        if problems:
            return Check(
                "devices",
                CheckStatus.FAIL,
                "; ".join(problems),
                "check `hl-smi` on that node (driver loaded, HABANA_VISIBLE_DEVICES=all in the "
                "container, seed 003 docker run)",
                {"devices": seen},
            )
        short = {n: c for n, c in seen.items() if c < CARDS_PER_NODE}
        status = CheckStatus.WARN if short else CheckStatus.PASS
        note = f"; hccl_demo runs on all {CARDS_PER_NODE} cards" if short else ""
        text = ", ".join(f"{n}: {c}" for n, c in seen.items())
        return Check("devices", status, f"{text} x {cell.device}{note}", "", {"devices": seen})


def _health(nodes: Facts) -> Check:
    bad, unknown = [], []
    for node, facts in _per_node(nodes):
        rc, out = _command(facts, "device_status")
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


def _nics(cell: Cell, nodes: Facts) -> Check:
    down, missing, ups = [], [], {}
    for node, facts in _per_node(nodes):
        rc, out = _command(facts, "nic")
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


def _multi_node_env(nodes: Facts) -> list[Check]:
    """GLOO_/HCCL_SOCKET_IFNAME name an interface of each node; lazy collectives on."""
    checks = []
    for var in ("GLOO_SOCKET_IFNAME", "HCCL_SOCKET_IFNAME"):
        problems = []
        for node, facts in _per_node(nodes):
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
    values = {
        n: f.get("env", {}).get("PT_HPU_ENABLE_LAZY_COLLECTIVES") for n, f in _per_node(nodes)
    }
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


def _calibrates_across_nodes(cell: Cell) -> bool:
    return (
        cell.is_fp8 and cell.runs("calibration") and cluster.nodes_needed(cell, CARDS_PER_NODE) > 1
    )


def _quant_config_buffer(nodes: Facts) -> Check:
    """Multi-node calibration needs QUANT_CONFIG naming a file on shared storage (seed 000)."""
    missing = [n for n, f in _per_node(nodes) if not f.get("paths", {}).get("$QUANT_CONFIG")]
    if not missing:
        return Check("quant_config.buffer", CheckStatus.PASS, "QUANT_CONFIG exists on every node")
    return Check(
        "quant_config.buffer",
        CheckStatus.FAIL,
        f"QUANT_CONFIG is unset or names a missing file on {', '.join(missing)}",
        "on NFS shared by all nodes: touch <nfs>/vllm-gaudi/calibration/quant_config_buffer.json "
        "and export QUANT_CONFIG=<that path> on every node (seed 000 steps 2 and 4)",
    )


def _hccl_demo(cell: Cell, nodes: Facts) -> Check:
    missing = [n for n, f in _per_node(nodes) if not f.get("paths", {}).get("hccl_demo")]
    where = cell.settings.collectives.hccl_demo_dir
    if not missing:
        return Check("hccl_demo", CheckStatus.PASS, f"{where}/run_hccl_demo.py present")
    return Check(
        "hccl_demo",
        CheckStatus.FAIL,
        f"{where}/run_hccl_demo.py not found on {', '.join(missing)}",
        "git clone https://github.com/HabanaAI/hccl_demo.git && cd hccl_demo && make, "
        "then set settings.collectives.hccl_demo_dir (seed 003)",
    )


def _governor(cell: Cell, nodes: Facts) -> Check:
    want = cell.settings.preflight.cpu_governor
    if want is None:
        return Check("cpu.governor", CheckStatus.SKIP, "not checked (preflight.cpu_governor)")
    other = {n: f.get("cpu_governor") for n, f in _per_node(nodes)}
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
