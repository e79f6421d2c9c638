"""What an operation did: the files it wrote, notes for the user, and where the time went."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

PHASES = ("parse", "compute", "encode", "write")


class Timings:
    """Seconds spent per phase (parse, compute, encode, write), summed over the operation."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = dict.fromkeys(PHASES, 0.0)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def total(self) -> float:
        return sum(self.seconds.values())


@dataclass
class Outcome:
    """Result of unify, expand or postprocess."""

    operation: str
    source: Path
    output: Path
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    timings: Timings = field(default_factory=Timings)

    def summary(self) -> str:
        """One line for the terminal."""
        return f"{self.operation}: wrote {len(self.files)} files to {self.output}"
