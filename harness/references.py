"""The reference an FP8 cell's accuracy is judged against: its BF16 twin's result in this run.

Read from the run's shared store (results.jsonl, which every xdist worker appends to), never
from one process's memory, so twins on different workers still find each other. When there is
no reference the lookup says which one was missing and how to provide it: the gate is then
UNKNOWN (harness.gates), never a pass.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Collection
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from typing import Protocol

from harness.cell import Cell
from harness.cell import bf16_twin_id
from harness.gates import GateOutcome
from harness.gates import GateSpec
from harness.gates import GateStatus
from harness.results import RunStore
from harness.results import StageResult


@dataclass(frozen=True)
class Reference:
    """A BF16 reference's metrics and where they came from, or why there is none."""

    metrics: Mapping[str, Any] | None
    source: str = ""  # e.g. "BF16 twin m/cpu/tp1/bf16-kv-auto in this run"
    missing: str = ""  # when metrics is None: which reference is missing, and what to do


class References(Protocol):
    """How a stage finds the BF16 reference of its cell."""

    def bf16_for(self, cell: Cell, stage: str) -> Reference: ...

    def fp8_verdict(self, fp8: StageResult, name: str, spec: GateSpec) -> GateOutcome:
        """The FP8-vs-BF16 gate on accuracy metric `name`: per problem against the twin's
        logged samples where both are readable; UNKNOWN (never a pass) without a reference."""
        ...


def judge_fp8(
    fp8: StageResult,
    twin: StageResult | None,
    run_dir: Path,
    name: str,
    spec: GateSpec,
    history: Any = None,
    like: Any = None,
    use_expected: bool = True,
) -> GateOutcome:
    """harness.history.baselines.fp8_accuracy_verdict as a gate outcome (stats load here): the
    twin, else the history's last passing BF16 run, else (`use_expected`) the gate's expected
    value."""
    from harness.history.baselines import fp8_accuracy_verdict
    from harness.history.context import RunContext

    verdict = fp8_accuracy_verdict(
        fp8, twin, run_dir, history, like or RunContext(run_id=""),
        float(spec.max_drop_vs_bf16 or 0.0), expected=spec.expected if use_expected else None,
        name=name,
        require_non_inferiority=spec.require_non_inferiority,
    )
    return verdict.as_outcome()


class NoReferences:
    """For contexts outside a run (tests of a single stage): every reference is missing."""

    def bf16_for(self, cell: Cell, stage: str) -> Reference:
        return Reference(None, missing="no run to look the BF16 twin up in")

    def fp8_verdict(self, fp8: StageResult, name: str, spec: GateSpec) -> GateOutcome:
        key = f"accuracy.{name}"
        missing = "no run to look the BF16 twin up in"
        return GateOutcome(key, float("nan"), False, "vs bf16",
                           f"{fp8.cell}: {key}: UNKNOWN, not evaluated: {missing}",
                           GateStatus.UNKNOWN, missing)


class RunReferences:
    """BF16 twins looked up in this run's store; `matrix_ids` / `selected_ids` word the miss."""

    def __init__(
        self, store: RunStore, matrix_ids: Collection[str], selected_ids: Collection[str]
    ) -> None:
        self.store = store
        self.matrix_ids = frozenset(matrix_ids)
        self.selected_ids = frozenset(selected_ids)
        # the gate's `expected` value is the last resort: off when a history fallback follows
        self.use_expected = True

    def bf16_for(self, cell: Cell, stage: str) -> Reference:
        twin = bf16_twin_id(cell.id)
        found = self.store.latest(twin, stage) if self.store.path.is_file() else None
        if found is not None and found.status == "passed":
            return Reference(found.metrics, f"BF16 twin {twin} in this run")
        if found is not None:
            why = f": {found.message.splitlines()[0][:160]}" if found.message else ""
            return Reference(
                None,
                missing=f"the BF16 twin {twin}'s {stage} stage {found.status} in this run{why}; "
                "fix it and rerun both cells",
            )
        return Reference(None, missing=self._missing_twin(twin, stage))

    def fp8_verdict(self, fp8: StageResult, name: str, spec: GateSpec) -> GateOutcome:
        twin = bf16_twin_id(fp8.cell)
        found = self.store.latest(twin, "accuracy") if self.store.path.is_file() else None
        outcome = judge_fp8(fp8, found, self.store.dir, name, spec, use_expected=self.use_expected)
        if outcome.unknown:  # say why this run had no twin, and how to provide one
            why = self._missing_twin(twin)
            return GateOutcome(outcome.metric, outcome.value, False, outcome.bound,
                               f"{outcome.message}; {why}", GateStatus.UNKNOWN,
                               f"{outcome.missing}; {why}")
        return outcome

    def _missing_twin(self, twin: str, stage: str = "accuracy") -> str:
        """Why this run has no usable record of the twin, and how to provide one."""
        if twin not in self.matrix_ids:
            return (f"no BF16 twin {twin} in the matrix: add bf16 (kv_cache_dtype auto) to this "
                    "model's axes, give the gate an expected BF16 value, or drop max_drop_vs_bf16")
        if twin not in self.selected_ids:
            return (f"the BF16 twin {twin} is not in this run's selection: include it "
                    "(--cells/--stages/-k/-m)")
        return f"the BF16 twin {twin} had not recorded a passing {stage} stage in this run"


class FallbackReferences:
    """This run's references first; a reference it lacks is asked of `fallback()` (e.g. the
    history database), built only then: a run whose twins are all here loads no more."""

    def __init__(self, run: References, fallback: Callable[[], References]) -> None:
        self.run = run
        self._fallback = fallback
        self._built: References | None = None

    def bf16_for(self, cell: Cell, stage: str) -> Reference:
        found = self.run.bf16_for(cell, stage)
        if found.metrics is not None:
            return found
        return self._built_fallback().bf16_for(cell, stage)

    def fp8_verdict(self, fp8: StageResult, name: str, spec: GateSpec) -> GateOutcome:
        outcome = self.run.fp8_verdict(fp8, name, spec)
        return outcome if not outcome.unknown else self._built_fallback().fp8_verdict(
            fp8, name, spec
        )

    def _built_fallback(self) -> References:
        if self._built is None:
            self._built = self._fallback()
        return self._built
