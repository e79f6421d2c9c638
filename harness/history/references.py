"""BF16 references that fall back to the history: plugs into harness.references as it is.

The session builds one per run in place of `RunReferences` (harness/session.py, `context()`):

    references = HistoryReferences(RunReferences(...), writer.reader(), like)

and every gate that asks `ctx.bf16_reference()` gets the BF16 twin of this run, or else the last
passing BF16 run of the same model, device, parallelism and stack from the history database;
with neither the miss names both (the gate is then UNKNOWN, never a pass).
"""

from __future__ import annotations

from pathlib import Path

from harness.cell import Cell
from harness.cell import bf16_twin_id
from harness.gates import GateOutcome
from harness.gates import GateSpec
from harness.history.baselines import differs_note
from harness.history.context import RunContext
from harness.history.store import History
from harness.history.url import HistoryError
from harness.references import Reference
from harness.references import References
from harness.references import judge_fp8
from harness.results import StageResult


class HistoryReferences:
    """This run's references first, then the history's."""

    def __init__(self, run: References, history: History | None, like: RunContext) -> None:
        self.run = run
        self.history = history
        self.like = like

    def bf16_for(self, cell: Cell, stage: str) -> Reference:
        found = self.run.bf16_for(cell, stage)
        if found.metrics is not None or self.history is None:
            return found
        twin = bf16_twin_id(cell.id)
        try:
            stored = self.history.last_passing(twin, stage, self.like)
        except HistoryError as exc:
            return Reference(None, missing=f"{found.missing}; history unreadable ({exc})")
        if stored is not None:
            commit = stored.run.commit or "?"
            return Reference(
                stored.metrics, f"BF16 run {stored.run.run_id} (commit {commit}) from history"
            )
        metric = f"{stage}.exact_match_strict"
        note = differs_note(self.history, twin, metric, self.like)
        return Reference(
            None,
            missing=f"{found.missing}; and no passing {twin} run of the same stack on "
            f"{self.like.host_class or 'this host class'} in the history database{note}",
        )

    def fp8_verdict(self, fp8: StageResult, name: str, spec: GateSpec) -> GateOutcome:
        """This run's twin, else the last passing BF16 run in the history, else the gate's
        expected value (harness.history.baselines.fp8_accuracy_verdict), else UNKNOWN."""
        outcome = self.run.fp8_verdict(fp8, name, spec)
        if not outcome.unknown:
            return outcome
        twin = self.store_twin(fp8)
        return judge_fp8(fp8, twin, self.run_dir(), name, spec, self.history, self.like)

    def store_twin(self, fp8: StageResult) -> StageResult | None:
        store = getattr(self.run, "store", None)
        if store is None or not store.path.is_file():
            return None
        found: StageResult | None = store.latest(bf16_twin_id(fp8.cell), "accuracy")
        return found

    def run_dir(self) -> Path:
        store = getattr(self.run, "store", None)
        return Path(store.dir) if store is not None else Path(".")
