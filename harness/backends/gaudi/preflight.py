"""Gaudi preflight: devices and their health, NIC ports, env per cell type, the QUANT_CONFIG
buffer file, vLLM on the Ray workers, converted DeepSeek weights on Gaudi2, hccl_demo built.

One probe (harness.cluster) runs on every node, through pinned Ray tasks when the cell needs
Ray, else on this host; node_checks reads its facts, so they are the same code for one
node or four and can be tested on recorded facts. Fix hints quote the seeds.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

from harness import cluster
from harness.backends.base import Check
from harness.backends.base import CheckStatus
from harness.backends.base import Inventory
from harness.backends.common import BackendCore
from harness.backends.gaudi import stack_checks
from harness.backends.gaudi import stacks
from harness.backends.gaudi.discovery import CARDS_PER_NODE
from harness.backends.gaudi.discovery import generation_of
from harness.backends.gaudi.node_checks import GEN_DIR
from harness.backends.gaudi.node_checks import NIC_SCRIPT
from harness.backends.gaudi.node_checks import Facts
from harness.backends.gaudi.node_checks import command_output
from harness.backends.gaudi.node_checks import converted_weights
from harness.backends.gaudi.node_checks import cpu_governor
from harness.backends.gaudi.node_checks import device_health
from harness.backends.gaudi.node_checks import multi_node_env
from harness.backends.gaudi.node_checks import nic_ports
from harness.backends.gaudi.node_checks import per_node
from harness.backends.gaudi.node_checks import quant_config_buffer
from harness.backends.gaudi.node_checks import required_env
from harness.cell import Cell
from harness.process import Command

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


def parse_devices(output: str) -> list[dict[str, str]]:
    """`hl-smi -Q index,name,bus_id,driver_version -f csv,noheader`: one device a line."""
    rows = []
    for line in output.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 4 and parts[0].isdigit():
            rows.append(dict(zip(("index", "name", "bus_id", "driver"), parts, strict=True)))
    return rows


def firmware_versions(output: str) -> list[str]:
    """The version strings `hl-smi --fw-version` prints (compared across nodes)."""
    return sorted(set(_VERSION.findall(output)))


class GaudiPreflight(BackendCore):
    """Stage mixin of the backend; see harness/backends/base.py for the protocol."""

    stack_packages: tuple[str, ...] = PACKAGES
    ray_hint = cluster.RAY_START_HINT
    starts_local_ray = False  # the seeds' cluster is started by hand; the harness connects
    per_node_env = PER_NODE_ENV

    def ray_placement(self, cell: Cell, nodes: int | None = None) -> cluster.Placement:
        """One `{"HPU": 8}` bundle per node, STRICT_SPREAD (DESIGN: Ray and placement)."""
        # never narrower than the cell's Ray work: a TP8 cell calibrated at TP16 runs its
        # calibration and its collectives on two nodes (collectives_nodes)
        return cluster.Placement(
            "HPU", CARDS_PER_NODE, max(nodes or 0, cluster.nodes_needed(cell, CARDS_PER_NODE))
        )

    def ray_cluster(self, cell: Cell) -> cluster.RayCluster:
        """The cluster the seeds start by hand; the harness only connects to it."""
        place = self.ray_placement(cell, cell.nodes)
        return cluster.shared(cell.backend_options, place.nodes, place.bundles[0], can_start=False)

    if TYPE_CHECKING:  # GaudiServing and GaudiBackend

        def fork_dir(self, cell: Cell) -> str: ...

        def quant_config_path(self, cell: Cell) -> Path: ...

        def inventory(self) -> Inventory: ...

    def _stack_paths(self, cell: Cell) -> dict[str, str]:
        """hccl_demo's built binary and, on the fork, its quant config and benchmark client."""
        config = None
        if stacks.profile(cell).name == "vllm-fork" and cell.is_fp8:
            config = self.quant_config_path(cell)
        return stack_checks.stack_paths(cell, self.fork_dir(cell), config)

    def preflight_spec(self, cell: Cell) -> dict[str, Any]:
        """What the probe gathers on each node: hl-smi, NIC status, env, packages, paths."""
        commands = {
            "devices": list(HL_SMI_DEVICES),
            "firmware": list(HL_SMI_FIRMWARE),
            "device_status": list(DEVICE_STATUS),
        }
        if cell.settings.preflight.nic_check:
            commands["nic"] = [NIC_SCRIPT.format(gen=GEN_DIR[cell.device]), "--status"]
        paths = self._stack_paths(cell)
        if cell.model.path:
            paths["model"] = str(Path(cell.model.path) / "config.json")
        return {
            "env": list(NODE_ENV),
            "env_set": list(cell.settings.preflight.required_env),  # the cell's, not a fixed list
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

    def device_facts(self, facts: Mapping[str, Any]) -> dict[str, Any]:
        """Driver and firmware versions join python, packages and env in the comparison."""
        devices = parse_devices(command_output(facts, "devices")[1])
        return {
            "driver": sorted({d["driver"] for d in devices}) or None,
            "firmware": firmware_versions(command_output(facts, "firmware")[1]) or None,
        }

    def preflight_checks(self, cell: Cell, nodes: Facts) -> list[Check]:
        """Checks on the probe's facts of every node (the stage adds Ray and agreement)."""
        checks = [self._devices(cell, nodes), device_health(nodes)]
        if cell.settings.preflight.nic_check:
            checks.append(nic_ports(cell, nodes))
        if cluster.nodes_needed(cell, CARDS_PER_NODE) > 1:
            checks += multi_node_env(nodes)
        if _calibrates_across_nodes(cell):
            checks.append(quant_config_buffer(nodes))
        checks += stack_checks.paths_present(cell, nodes, self._stack_paths(cell))
        if cell.is_fp8 and cell.runs("serving"):
            checks.append(stack_checks.checkpoint_decision(cell))
        if cell.is_fp8 and cell.runs("calibration"):
            checks.append(stack_checks.calibration_samples(cell))
        if cell.device == "g2" and cell.model.architecture == "deepseek_v3":
            checks.append(converted_weights(cell))
        checks.append(cpu_governor(cell, nodes))
        checks += required_env(cell.settings.preflight.required_env, nodes)
        return checks

    def _devices(self, cell: Cell, nodes: Facts) -> Check:
        """Count and generation per node: discovery (pyhlml, else hl-smi) here, hl-smi on nodes."""
        need = CARDS_PER_NODE if cell.nodes > 1 else cell.world_size
        problems, seen = [], {}
        for node, facts in per_node(nodes):
            if node == "local":
                inv = self.inventory()
                if not inv.available:
                    problems.append(f"{node}: {inv.missing_reason}")
                    continue
                count, gens = inv.count, {inv.device}
            else:
                devices = parse_devices(command_output(facts, "devices")[1])
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


def _calibrates_across_nodes(cell: Cell) -> bool:
    return (
        cell.is_fp8 and cell.runs("calibration") and cluster.nodes_needed(cell, CARDS_PER_NODE) > 1
    )
