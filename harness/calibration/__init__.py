"""FP8 calibration: calibrate once per key (INC measure -> postprocess -> quantize), derive many.

The stage (`harness.stages.calibration`) and serving use::

    from harness.calibration import ensure
    artifacts = ensure(cell, backend, cache_dir)   # CalibrationArtifacts
    env = artifacts.env                            # {"QUANT_CONFIG": ...}

Backends build `Recipe`s of commands from a `CalibrationJob` (and a `Derivation` to the cell's
TP/EP); `ensure` runs them once per `CalibrationKey` under a file lock. On the cpu backend the
commands are rank workers (`python -m harness.calibration.worker`, INC on a vLLM-style model
sharded over gloo ranks) and the measurement toolkit (`python -m harness.calibration.tools`);
on Gaudi they are calibrate_model.sh and the step-3/5/6 scripts. Nothing here imports torch:
the worker-side modules (`vllm_model`, `inc_cpu`, `checkpoint`, `worker`) are only imported
inside rank processes.
"""

from harness.calibration.artifacts import CalibrationArtifacts
from harness.calibration.key import CalibrationKey
from harness.calibration.recipe import CalibrationJob
from harness.calibration.recipe import Derivation
from harness.calibration.recipe import Recipe
from harness.calibration.recipe import Step
from harness.calibration.service import Plan
from harness.calibration.service import ensure
from harness.calibration.service import plan

__all__ = [
    "CalibrationArtifacts",
    "CalibrationJob",
    "CalibrationKey",
    "Derivation",
    "Plan",
    "Recipe",
    "Step",
    "ensure",
    "plan",
]
