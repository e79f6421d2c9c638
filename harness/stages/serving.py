"""Serving stage: one server per cell, kept up for the cell's accuracy and throughput stages."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from harness.stages.base import StageContext
from harness.stages.base import StageSkipped

NOT_BUILT = "the serving stage is not built yet (issue #5)"


@contextlib.contextmanager
def serve(session: Any, cell: Any, calibration: Any) -> Iterator[Any]:
    """Start the cell's server; not built yet, so every consumer skips with that reason."""
    raise StageSkipped(NOT_BUILT)
    yield  # pragma: no cover


def run(ctx: StageContext, **_: object) -> None:
    raise StageSkipped(NOT_BUILT)
