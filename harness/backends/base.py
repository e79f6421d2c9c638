"""The Backend protocol: a stage asks its backend for commands, env and capabilities.

A backend says *where* a stage runs (a Gaudi cluster, or this CPU box in miniature). Stages never
branch on a backend's name; they call the methods below. Each backend is a package whose class
is composed of one mixin per stage (`preflight.py`, `collectives.py`, `calibration.py`,
`serving.py`, ...), so each concern stays a small module.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field
from enum import StrEnum
from pathlib import Path
from typing import Protocol
from typing import runtime_checkable

from harness.cell import Cell
from harness.cell import Stage
from harness.process import Command


@dataclass(frozen=True)
class Inventory:
    """What the backend found on this host: devices of which generation, and how many."""

    device: str | None  # "g2", "g3", "cpu"; None when nothing usable was found
    count: int
    detail: str = ""
    missing_reason: str | None = None  # why no device was found, with what to do

    @property
    def available(self) -> bool:
        return self.device is not None and self.count > 0


class CheckStatus(StrEnum):
    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True)
class Check:
    """One preflight check: a name, a status, what was seen, and how to fix it."""

    name: str
    status: CheckStatus
    message: str
    hint: str = ""
    facts: dict[str, object] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "status": self.status.value,
            "message": self.message,
            "hint": self.hint,
            "facts": self.facts,
        }


@runtime_checkable
class Backend(Protocol):
    """Where the stages run. Methods a backend cannot honour return a skip reason instead."""

    name: str
    devices: frozenset[str]

    def inventory(self) -> Inventory:
        """Discover devices; never raises for 'no devices' (that is `missing_reason`)."""
        ...

    def skip_reason(self, cell: Cell, stage: Stage) -> str | None:
        """Why `stage` of `cell` cannot run here, and how to lift it; None if it can."""
        ...

    def cell_env(self, cell: Cell) -> dict[str, str]:
        """Environment every command of the cell gets (offline flags, thread binding, ...)."""
        ...

    def stack_versions(self) -> dict[str, str | None]:
        """Versions of the serving stack here (None: not installed), kept with the run."""
        ...

    def plan(self, cell: Cell, stage: Stage, workdir: Path) -> list[Command]:
        """The exact commands `stage` of `cell` would run, for --plan and golden tests."""
        ...
