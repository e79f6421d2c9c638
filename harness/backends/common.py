"""Behaviour both backends share: plan dispatch to the per-stage mixins."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any

from harness.backends.base import Inventory
from harness.cell import Cell
from harness.cell import Stage
from harness.devices import backend_for
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


def _env_text(value: Any) -> str:
    """YAML's true/false as the shell spells them (PT_HPU_ENABLE_LAZY_COLLECTIVES=true)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


class BackendCore:
    """Dispatches `plan(cell, stage)` to `plan_<stage>` of the stage mixins."""

    name = "base"
    devices: frozenset[str] = frozenset()
    stack_packages: tuple[str, ...] = ()  # recorded with every run (and checked by preflight)

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        self.options = dict(options or {})

    def option(self, cell: Cell | None, key: str, default: Any = None) -> Any:
        """A backend option: the cell's (the matrix's backend_options, overrides applied) before
        the run's (workdir, cache_dir)."""
        if cell is not None and cell.backend_options.get(key) is not None:
            return cell.backend_options[key]
        return self.options.get(key, default)

    def extra_env(self, cell: Cell | None) -> dict[str, str]:
        """backend_options.env: added to every command the cell runs."""
        env = dict(self.options.get("env") or {})
        if cell is not None:
            env.update(cell.backend_options.get("env") or {})
        return {str(k): _env_text(v) for k, v in env.items()}

    def inventory(self) -> Inventory:
        """Each backend discovers its own devices (cpu: cores; gaudi: pyhlml or hl-smi)."""
        raise NotImplementedError(f"{type(self).__name__} does not discover devices")

    def cell_env(self, cell: Cell) -> dict[str, str]:
        """Environment every command of the cell gets; backends add theirs to this."""
        return self.extra_env(cell)

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
                f"(use --backend {backend_for({cell.device})})"
            )
        return None
