"""An FP8 cell runs beside its BF16 twin; its accuracy gate waits for the twin's record.

The plan starts the FP8 serving phase only once the twin's has started, so the twin holds its
own cards and will record its accuracy (or fail); the FP8 accuracy stage polls the run's store
for that record before it judges, instead of the whole FP8 phase queuing behind the twin.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from collections.abc import Collection

from harness.cell import Cell
from harness.cell import bf16_twin_id
from harness.gates import GateOutcome
from harness.gates import GateSpec
from harness.references import Reference
from harness.references import References
from harness.results import RunStore
from harness.results import StageResult

Sleep = Callable[[float], None]
Clock = Callable[[], float]


def await_record(
    store: RunStore,
    cell_id: str,
    stage: str,
    timeout_s: float,
    poll_s: float = 5.0,
    sleep: Sleep = time.sleep,
    clock: Clock = time.monotonic,
) -> bool:
    """Whether `stage` of `cell_id` was recorded (any status) within `timeout_s`."""
    deadline = clock() + timeout_s
    while True:
        if store.path.is_file() and store.latest(cell_id, stage) is not None:
            return True
        if clock() >= deadline:
            return False
        sleep(poll_s)


class TwinWaitingReferences:
    """`references` for a run whose cells go in parallel: a lookup of a twin this run runs
    (`running`: its (cell, stage) pairs) first waits for the twin's record."""

    def __init__(
        self,
        references: References,
        store: RunStore,
        running: Collection[tuple[str, str]],
        timeout_s: Callable[[str], float],
        poll_s: float = 5.0,
        sleep: Sleep = time.sleep,
    ) -> None:
        self.references = references
        self.store = store
        self.running = frozenset(running)
        self.timeout_s = timeout_s  # the cell id -> how long its twin may take
        self.poll_s = poll_s
        self.sleep = sleep

    def _wait(self, cell_id: str, stage: str) -> None:
        twin = bf16_twin_id(cell_id)
        if twin != cell_id and (twin, stage) in self.running:
            await_record(self.store, twin, stage, self.timeout_s(cell_id), self.poll_s, self.sleep)

    def bf16_for(self, cell: Cell, stage: str) -> Reference:
        self._wait(cell.id, stage)
        return self.references.bf16_for(cell, stage)

    def fp8_verdict(self, fp8: StageResult, name: str, spec: GateSpec) -> GateOutcome:
        self._wait(fp8.cell, "accuracy")
        return self.references.fp8_verdict(fp8, name, spec)
