"""The stages: one module each (`preflight`, `collectives`, `calibration`, `serving`, `accuracy`,
`throughput`), each with a `run(ctx, <the fixtures it uses>)` that a suite test names:
`stage.run(accuracy.run, server=server)` (see runner.py)."""

from __future__ import annotations

from harness.stages.base import GateFailed
from harness.stages.base import Recorder
from harness.stages.base import StageContext
from harness.stages.base import StageSkipped

__all__ = ["GateFailed", "Recorder", "StageContext", "StageSkipped"]
