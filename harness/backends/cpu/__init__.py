"""The cpu backend: the whole pipeline for real, in miniature, on this host."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import psutil

from harness.backends.base import Inventory
from harness.backends.common import BackendCore
from harness.backends.contracts import Backend
from harness.backends.cpu.calibration import CpuCalibration
from harness.backends.cpu.collectives import CpuCollectives
from harness.backends.cpu.preflight import CpuPreflight
from harness.backends.cpu.serving import CpuServing
from harness.cell import Cell
from harness.cell import Stage

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


class CpuBackend(CpuPreflight, CpuCollectives, CpuCalibration, CpuServing, BackendCore):
    """Runs INC, vLLM's CPU build, lm-eval, gloo and Ray on local processes."""

    name = "cpu"
    devices = frozenset({"cpu"})

    def inventory(self) -> Inventory:
        cores = len(os.sched_getaffinity(0))
        mem_gib = psutil.virtual_memory().total / 2**30
        return Inventory("cpu", cores, f"{cores} cores, {mem_gib:.1f} GiB memory")

    def skip_reason(self, cell: Cell, stage: Stage) -> str | None:
        reason = self.device_reason(cell)
        if reason:
            return reason
        if cell.world_size > self.inventory().count:
            return (
                f"needs {cell.world_size} ranks but this host has {self.inventory().count} cores "
                "(lower tp/ep, or run on a bigger host)"
            )
        return None

    def cell_env(self, cell: Cell) -> dict[str, str]:
        env = dict(OFFLINE_ENV)
        env.update(self.extra_env(cell))
        return env


if TYPE_CHECKING:  # mypy checks that the cpu backend satisfies every stage's contract
    _conforms: type[Backend] = CpuBackend
