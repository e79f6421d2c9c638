"""The gaudi backend: the exact commands and environment of the documented procedures."""

from __future__ import annotations

from typing import TYPE_CHECKING
from typing import Any

from harness.backends.base import Inventory
from harness.backends.common import BackendCore
from harness.backends.contracts import Backend
from harness.backends.gaudi import stacks
from harness.backends.gaudi.calibration import GaudiCalibration
from harness.backends.gaudi.collectives import GaudiCollectives
from harness.backends.gaudi.discovery import discover
from harness.backends.gaudi.preflight import GaudiPreflight
from harness.backends.gaudi.serving import GaudiServing
from harness.cell import Cell
from harness.cell import Stage


class GaudiBackend(GaudiPreflight, GaudiCollectives, GaudiCalibration, GaudiServing, BackendCore):
    """Builds and runs the seeds' commands on Gaudi2/Gaudi3 nodes."""

    name = "gaudi"
    devices = frozenset({"g2", "g3"})

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self._inventory: Inventory | None = None

    def inventory(self) -> Inventory:
        if self._inventory is None:
            self._inventory = discover()
        return self._inventory

    def skip_reason(self, cell: Cell, stage: Stage) -> str | None:
        reason = self.device_reason(cell)
        if reason:
            return reason
        inv = self.inventory()
        if not inv.available:
            return f"gaudi backend: {inv.missing_reason}"
        if inv.device != cell.device:
            return (
                f"cell targets {cell.device} but this host has {inv.device} "
                "(scales are device-specific: run it on a matching node)"
            )
        return None

    def stack_name(self, cell: Cell) -> str:
        """The cell's serving stack (backend_options.stack), shown by --plan and the report."""
        return stacks.profile(cell).name

    def cell_env(self, cell: Cell) -> dict[str, str]:
        env: dict[str, str] = {}
        if cell.multi_node:
            env["PT_HPU_ENABLE_LAZY_COLLECTIVES"] = "true"
        env.update(self.extra_env(cell))
        return env


if TYPE_CHECKING:  # mypy checks that the gaudi backend satisfies every stage's contract
    _conforms: type[Backend] = GaudiBackend
