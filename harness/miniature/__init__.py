"""Miniature models for the CPU backend: data, tokenizer, models and their weights.

The committed weights live in ``harness/miniature/weights/<name>/`` as HF model
directories (bf16 safetensors, tokenizer files, ``TRAINING.md``). Nothing here
imports torch at import time.
"""

from __future__ import annotations

from pathlib import Path

from harness.errors import HarnessError
from harness.miniature.build import MODELS
from harness.miniature.build import ModelFacts
from harness.miniature.scoring import evaluate
from harness.miniature.synthetic import Problem
from harness.miniature.synthetic import generate
from harness.miniature.synthetic import write_calibration_pickle
from harness.miniature.synthetic import write_gsm8k_splits

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

__all__ = [
    "MODELS",
    "WEIGHTS_DIR",
    "ModelFacts",
    "Problem",
    "evaluate",
    "generate",
    "model_dir",
    "write_calibration_pickle",
    "write_gsm8k_splits",
]


def model_dir(name: str) -> Path:
    """Return the committed HF model directory of miniature model ``name``.

    Raises:
        HarnessError: unknown name, or the weights are missing from the checkout.
    """
    if name not in MODELS:
        raise HarnessError(
            f"Unknown miniature model {name!r}. Available: {', '.join(sorted(MODELS))}"
        )
    path = WEIGHTS_DIR / name
    if not (path / "config.json").is_file():
        raise HarnessError(
            f"{path}: no config.json; the committed weights of {name!r} are missing. "
            f"Restore them from git or retrain: python -m harness.miniature.train "
            f"--model {name} --out {path}"
        )
    return path
