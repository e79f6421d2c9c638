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
from typing import Any
from typing import Protocol

from harness.cell import Cell
from harness.cell import bf16_twin_id
from harness.results import RunStore


@dataclass(frozen=True)
class Reference:
    """A BF16 reference's metrics and where they came from, or why there is none."""

    metrics: Mapping[str, Any] | None
    source: str = ""  # e.g. "BF16 twin m/cpu/tp1/bf16-kv-auto in this run"
    missing: str = ""  # when metrics is None: which reference is missing, and what to do


class References(Protocol):
    """How a stage finds the BF16 reference of its cell."""

    def bf16_for(self, cell: Cell, stage: str) -> Reference: ...


class NoReferences:
    """For contexts outside a run (tests of a single stage): every reference is missing."""

    def bf16_for(self, cell: Cell, stage: str) -> Reference:
        return Reference(None, missing="no run to look the BF16 twin up in")


class RunReferences:
    """BF16 twins looked up in this run's store; `matrix_ids` / `selected_ids` word the miss."""

    def __init__(
        self, store: RunStore, matrix_ids: Collection[str], selected_ids: Collection[str]
    ) -> None:
        self.store = store
        self.matrix_ids = frozenset(matrix_ids)
        self.selected_ids = frozenset(selected_ids)

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
        if twin not in self.matrix_ids:
            return Reference(
                None,
                missing=f"no BF16 twin {twin} in the matrix: add bf16 (kv_cache_dtype auto) to "
                "this model's axes, or drop max_drop_vs_bf16 for the cell",
            )
        if twin not in self.selected_ids:
            return Reference(
                None,
                missing=f"the BF16 twin {twin} is not in this run's selection: include it "
                "(--cells/--stages/-k/-m)",
            )
        return Reference(
            None, missing=f"the BF16 twin {twin} had not recorded its {stage} stage yet"
        )


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
        if self._built is None:
            self._built = self._fallback()
        return self._built.bf16_for(cell, stage)
