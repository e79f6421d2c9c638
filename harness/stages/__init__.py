"""Stage registry: each stage is a module with `run(ctx, **fixtures)`; imported lazily."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from harness.cell import Stage
from harness.stages.base import GateFailed
from harness.stages.base import Recorder
from harness.stages.base import StageContext
from harness.stages.base import StageSkipped

__all__ = ["GateFailed", "Recorder", "StageContext", "StageSkipped", "runner_for"]


def runner_for(stage: Stage) -> Callable[..., Any]:
    """The `run` function of `harness.stages.<stage>`."""
    module = importlib.import_module(f"harness.stages.{Stage(stage).value}")
    return module.run
