"""Calibration commands that depend on the vllm-gaudi checkout and the dataset.

References: vllm-project/vllm-gaudi calibration/calibrate_model.sh at v0.13.0 (getopts
"m:b:l:t:d:h:o:r:u:e", `case u` at lines 120-122 ignores the value) and at main @091bbad
(getopts "m:b:l:t:d:h:o:r:ue", line 98; changed by 9e77a155 "Fix -u flag requiring argument").
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from harness.backends.gaudi import GaudiBackend
from harness.calibration import service
from harness.cell import Cell
from harness.matrix import load_matrix
from harness.settings import StageSettings

OLD = 'while getopts "m:b:l:t:d:h:o:r:u:e" OPT; do\n'  # v0.13.0 line 98
NEW = 'while getopts "m:b:l:t:d:h:o:r:ue" OPT; do\n'  # main @091bbad line 98


def _deepseek(scripts: Path, samples: int = 512, dataset: str | None = None) -> Cell:
    cell = next(c for c in load_matrix("nightly-g2").cells
                if c.id == "deepseek-r1-0528/g2/tp8-ep8/fp8-kv-fp8_inc")
    calibration = {**cell.settings.calibration.model_dump(), "scripts_dir": str(scripts),
                   "samples": samples}
    if dataset:
        calibration["dataset"] = dataset
    settings = StageSettings.model_validate({**cell.settings.model_dump(),
                                             "calibration": calibration})
    return dataclasses.replace(cell, settings=settings)


def _calibrate(cell: Cell, tmp_path: Path) -> tuple[tuple[str, ...], str]:
    backend = GaudiBackend({"cache_dir": str(tmp_path / "cache")})
    p = service.plan(cell, backend, tmp_path / "cache", materialize=False)
    (step,) = backend.calibration_recipe(p.job, p.derivation).steps
    (cmd,) = step.commands
    return cmd.argv, cmd.description


@pytest.mark.parametrize(("getopts", "tail"), [(NEW, ("-u",)), (OLD, ("-u", "1"))])
def test_u_follows_the_checkouts_getopts(tmp_path: Path, getopts: str, tail: tuple[str, ...]) -> None:
    scripts = tmp_path / "calibration"
    scripts.mkdir()
    (scripts / "calibrate_model.sh").write_text("#!/bin/bash\n" + getopts, encoding="utf-8")
    argv, description = _calibrate(_deepseek(scripts), tmp_path)
    assert argv[-len(tail):] == tail and argv[-len(tail) - 2:-len(tail)] == ("-t", "8")
    assert ("getopts u:" in description) is (getopts == OLD)


def test_an_unreadable_checkout_keeps_bare_u_and_says_what_it_needs(tmp_path: Path) -> None:
    argv, description = _calibrate(_deepseek(tmp_path / "absent"), tmp_path)
    assert argv[-1] == "-u"
    assert 'bare -u needs its getopts "...r:ue" (vllm-gaudi 9e77a155, v0.14.1+)' in description


def test_the_plan_warns_when_l_exceeds_the_datasets_rows(tmp_path: Path) -> None:
    """step-1-prepare-calibration-dataset.py:20 @091bbad: ds.head(-l)."""
    cell = _deepseek(tmp_path, samples=4096,
                     dataset="/data/open_orca_gpt4_tokenized_llama.calibration_1000.pkl")
    _, description = _calibrate(cell, tmp_path)
    assert "WARNING -l 4096 but open_orca_gpt4_tokenized_llama.calibration_1000.pkl" in description
    assert "so 1000 samples are measured" in description
