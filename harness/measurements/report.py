"""Findings of the measurement doctor and the report that holds them."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import field as dc_field
from enum import StrEnum
from pathlib import Path
from typing import Any

LIST_MAX = 5


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True)
class Finding:
    severity: Severity
    code: str
    message: str
    location: str

    def to_dict(self) -> dict[str, str]:
        return {
            "severity": self.severity.value,
            "code": self.code,
            "message": self.message,
            "location": self.location,
        }


@dataclass
class CheckReport:
    """Findings of :func:`check` plus a summary of each set it looked at."""

    path: str
    device: str | None = None
    findings: list[Finding] = dc_field(default_factory=list)
    sets: list[dict[str, Any]] = dc_field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity is Severity.ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity is Severity.WARNING]

    @property
    def ok(self) -> bool:
        """No errors (warnings allowed)."""
        return not self.errors

    def codes(self) -> set[str]:
        return {f.code for f in self.findings}

    def add(self, severity: Severity, code: str, message: str, location: Path | str) -> None:
        self.findings.append(Finding(severity, code, message, str(location)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "device": self.device,
            "ok": self.ok,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "findings": [f.to_dict() for f in self.findings],
            "sets": self.sets,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def render(self) -> str:
        """Text for the terminal."""
        lines = [f"check {self.path}: {len(self.errors)} errors, {len(self.warnings)} warnings"]
        for s in self.sets:
            what = f"{s['kind']} ({s['method']})" if s.get("method") else s["kind"]
            lines.append(f"  set {s['prefix']} {what}, world {s['world']}: {s['summary']}")
        order = {Severity.ERROR: 0, Severity.WARNING: 1, Severity.INFO: 2}
        for f in sorted(self.findings, key=lambda f: order[f.severity]):
            lines.append(f"  {f.severity.value:<7} {f.code}: {f.message}")
            lines.append(f"          at {f.location}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------


def listing(items: list[str]) -> str:
    """The first few items, and how many more."""
    shown = ", ".join(items[:LIST_MAX])
    return shown + (f" (+{len(items) - LIST_MAX} more)" if len(items) > LIST_MAX else "")


def ranks_text(ranks: Iterable[int]) -> str:
    """``0-3, 7``: rank numbers as spans."""
    rs = sorted(set(ranks))
    if not rs:
        return "none"
    spans: list[str] = []
    start = prev = rs[0]
    for r in [*rs[1:], None]:
        if r is not None and r == prev + 1:
            prev = r
            continue
        spans.append(str(start) if start == prev else f"{start}-{prev}")
        if r is not None:
            start = prev = r
    return ", ".join(spans)
