"""What backends report (inventory, preflight checks); their contracts are in contracts.py.

A backend says *where* a stage runs (a Gaudi cluster, or this CPU box in miniature). Stages never
branch on a backend's name; they call the members of `harness.backends.contracts.Backend`. Each
backend is a package whose class is composed of one mixin per stage (`preflight.py`,
`collectives.py`, `calibration.py`, `serving.py`, ...), so each concern stays a small module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from enum import StrEnum


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
    facts: Mapping[str, object] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "status": self.status.value,
            "message": self.message,
            "hint": self.hint,
            "facts": self.facts,
        }
