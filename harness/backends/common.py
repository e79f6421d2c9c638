"""Behaviour both backends share: plan dispatch to the per-stage mixins."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from harness.cell import Cell
from harness.cell import Stage
from harness.process import Command


def package_versions(names: tuple[str, ...]) -> dict[str, str | None]:
    """Installed versions by distribution name, without importing the packages."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


class BackendCore:
    """Dispatches `plan(cell, stage)` to `plan_<stage>` of the stage mixins."""

    name = "base"
    devices: frozenset[str] = frozenset()
    stack_packages: tuple[str, ...] = ()  # recorded with every run (and checked by preflight)

    def __init__(self, options: dict | None = None) -> None:
        self.options = dict(options or {})

    def stack_versions(self) -> dict[str, str | None]:
        """The serving stack on the host running pytest, for the run's context line."""
        return package_versions(self.stack_packages)

    def plan(self, cell: Cell, stage: Stage, workdir: Path) -> list[Command]:
        planner = getattr(self, f"plan_{Stage(stage).value}", None)
        if planner is None:
            return []
        return list(planner(cell, workdir))

    def device_reason(self, cell: Cell) -> str | None:
        """Cells of a device this backend does not drive are skipped, with the fix."""
        if cell.device not in self.devices:
            return (
                f"{self.name} backend does not run {cell.device} cells "
                f"(use --backend {'gaudi' if cell.device in ('g2', 'g3') else 'cpu'})"
            )
        return None
