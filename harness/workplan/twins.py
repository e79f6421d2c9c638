"""An FP8 cell runs beside its BF16 twin; its accuracy gate waits for the twin's record.

The plan starts the FP8 serving phase only once the twin's has started, so the twin holds its
own cards and will record its accuracy (or fail); the FP8 accuracy stage polls the run's store
for that record before it judges, instead of the whole FP8 phase queuing behind the twin.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from harness.cell import Cell
from harness.cell import bf16_twin_id
from harness.references import Reference
from harness.references import References
from harness.results import RunStore


def wait_for_twin(
    references: References,
    store: RunStore,
    cell: Cell,
    stage: str,
    timeout_s: float,
    poll_s: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Reference:
    """The twin's reference once it recorded `stage` (or the timeout passed: then the lookup
    says it had not recorded it yet, and the gate is UNKNOWN, never a pass)."""
    twin = bf16_twin_id(cell.id)
    deadline = clock() + timeout_s
    while clock() < deadline:
        if store.path.is_file() and store.latest(twin, stage) is not None:
            break
        sleep(poll_s)
    return references.bf16_for(cell, stage)
