"""What every stage gets (a context) and gives back (metrics, artifacts, gate outcomes)."""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

from harness.backends.contracts import Backend
from harness.cell import Cell
from harness.cell import Stage
from harness.errors import HarnessError
from harness.gates import GateOutcome
from harness.gates import evaluate
from harness.references import NoReferences
from harness.references import Reference
from harness.references import References
from harness.results import StageResult


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
    # a node stage of a cell whose nodes a node phase measured once (a `pytest -n` run): that
    # record and the phase's unit id; the stage refers to it instead of measuring again
    referenced: tuple[StageResult, str] | None = None

    def metric(self, name: str, value: Any) -> None:
        self.metrics[name] = value

    def update(self, values: Mapping[str, Any]) -> None:
        self.metrics.update(values)

    def artifact(self, name: str, path: Path) -> None:
        self.artifacts[name] = str(path)


@dataclass
class StageContext:
    """Everything a stage needs: the cell, where it runs, where it writes, and its references."""

    cell: Cell
    stage: Stage
    backend: Backend
    workdir: Path
    cache_dir: Path
    recorder: Recorder = field(default_factory=Recorder)
    # the BF16 twin's results (from the run's shared store) for FP8-vs-BF16 gates
    references: References = field(default_factory=NoReferences)

    @property
    def env(self) -> dict[str, str]:
        return self.backend.cell_env(self.cell)

    def bf16_reference(self) -> Reference:
        """The BF16 cell with the same model, device and parallelism, or why there is none."""
        return self.references.bf16_for(self.cell, self.stage.value)

    def check_gates(
        self, reference: Reference | None = None, judged: Sequence[GateOutcome] = ()
    ) -> list[GateOutcome]:
        """Evaluate this stage's gates on what was recorded; raise GateFailed listing failures.

        `judged`: the stage's own outcomes of its FP8-vs-BF16 gates (the accuracy stage judges
        them per problem), which then replace the point-estimate comparison. A gate whose
        reference is missing is recorded UNKNOWN (never a pass) and does not fail the stage:
        the run's verdict says what was not evaluated and how to provide it."""
        needs_twin = self.cell.is_fp8 and any(
            spec.max_drop_vs_bf16 is not None
            for key, spec in self.cell.gates.items()
            if key.startswith(f"{self.stage.value}.")
        )
        if reference is None and needs_twin and not judged:
            reference = self.bf16_reference()
        outcomes = evaluate(
            self.cell.id,
            self.stage.value,
            self.recorder.metrics,
            self.cell.gates,
            reference.metrics if reference else None,
            is_bf16=not self.cell.is_fp8,
            bf16_missing=reference.missing if reference else "",
            drop_judged=bool(judged),
        )
        outcomes = [*outcomes, *judged]
        self.recorder.gates.extend(outcomes)
        failed = [o.message for o in outcomes if o.failed]
        if failed:
            raise GateFailed("\n".join(failed))
        return outcomes
