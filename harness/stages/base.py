"""What every stage gets (a context) and gives back (metrics, artifacts, gate outcomes)."""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

from harness.backends.base import Backend
from harness.cell import Cell
from harness.cell import Stage
from harness.cell import bf16_twin_id
from harness.errors import HarnessError
from harness.gates import GateOutcome
from harness.gates import evaluate


class StageSkipped(HarnessError):
    """The stage cannot do its work here; the message says why and how to lift it."""


class GateFailed(HarnessError):
    """One or more gates of a stage failed; the message has one line per failed gate."""


@dataclass
class Recorder:
    """Collects what a stage measured, as it goes, so a failure still keeps the figures."""

    metrics: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    gates: list[GateOutcome] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def metric(self, name: str, value: Any) -> None:
        self.metrics[name] = value

    def update(self, values: Mapping[str, Any]) -> None:
        self.metrics.update(values)

    def artifact(self, name: str, path: Path) -> None:
        self.artifacts[name] = str(path)


@dataclass
class StageContext:
    """Everything a stage needs: the cell, where it runs, where it writes, and the run so far."""

    cell: Cell
    stage: Stage
    backend: Backend
    workdir: Path
    cache_dir: Path
    recorder: Recorder = field(default_factory=Recorder)
    # metrics of this run's other cells, by cell id and stage (for FP8-vs-BF16 gates)
    lookup: Callable[[str, str], Mapping[str, Any] | None] = lambda cell_id, stage: None

    @property
    def env(self) -> dict[str, str]:
        return self.backend.cell_env(self.cell)

    def bf16_counterpart(self) -> Mapping[str, Any] | None:
        """Metrics of the BF16 cell with the same model, device and parallelism, if it ran."""
        if not self.cell.is_fp8:
            return None
        return self.lookup(bf16_twin_id(self.cell.id), self.stage.value)

    def check_gates(self) -> list[GateOutcome]:
        """Evaluate this stage's gates on what was recorded; raise GateFailed listing failures."""
        outcomes = evaluate(
            self.cell.id,
            self.stage.value,
            self.recorder.metrics,
            self.cell.gates,
            self.bf16_counterpart(),
        )
        self.recorder.gates.extend(outcomes)
        failed = [o.message for o in outcomes if not o.passed]
        if failed:
            raise GateFailed("\n".join(failed))
        return outcomes
