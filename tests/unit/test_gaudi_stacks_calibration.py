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


def _with_source(cell: Cell, source: Path, **calibration: object) -> Cell:
    cs = cell.settings.calibration.model_copy(update={"source": str(source), **calibration})
    return dataclasses.replace(cell, settings=cell.settings.model_copy(update={"calibration": cs}))


def test_seed_003s_downloaded_set_is_checked_copied_and_served_on_the_fork(tmp_path: Path) -> None:
    """Seed 003: `huggingface-cli download Yi30/ds-r1-0528-default-pile-g2-0529 --local-dir
    ./scripts/nc_workspace_measure_kvcache` for DeepSeek-R1-0528 at TP8; files
    inc_measure_output_hooks_maxabs_<r>_8{.json,.npz,_mod_list.json} (seed's `ls -l`)."""
    from harness.backends.gaudi import measurement_source

    base = next(c for c in load_matrix("nightly-g2").cells
                if c.id == "deepseek-r1-0528/g2/tp8-ep8/fp8-kv-fp8_inc")
    cell = _with_source(dataclasses.replace(base, backend_options={"stack": "vllm-fork"}),
                        tmp_path / "ds-r1-0528-default-pile-g2-0529")
    backend = GaudiBackend({"cache_dir": str(tmp_path / "cache")})
    p = service.plan(cell, backend, tmp_path / "cache", materialize=False)
    assert p.derivation is None and p.key.dataset == f"source:{tmp_path}/ds-r1-0528-default-pile-g2-0529"
    recipe = backend.calibration_recipe(p.job, None)
    check, copy = recipe.steps
    assert check.commands[0].argv == ("ls", "-1", str(tmp_path / "ds-r1-0528-default-pile-g2-0529"))
    listing = "\n".join(f"inc_measure_output_hooks_maxabs_{r}_8{s}" for r in range(8)
                        for s in (".json", ".npz", "_mod_list.json"))
    assert check.check is not None and check.check(listing) is None
    problem = check.check(listing.replace("inc_measure_output_hooks_maxabs_3_8.npz", ""))
    assert problem is not None and "not a 8-rank INC measurement set (rank 3: npz)" in problem
    assert measurement_source.missing_files(listing, 16)[0] == "rank 0: json, mod_list, npz"
    assert recipe.quant_copy is not None and recipe.quant_copy[2] == recipe.measurement_dir / "inc_output"
    assert "inc_output_hooks_maxabs" in copy.commands[0].argv[2]


def test_a_pre_made_set_on_vllm_gaudi_gets_calibrate_model_shs_config_and_is_unified_like_ours(
    tmp_path: Path,
) -> None:
    base = next(c for c in load_matrix("nightly-g2").cells
                if c.id == "llama-3.1-405b/g2/tp8/fp8-kv-fp8_inc")
    cell = _with_source(base, tmp_path / "set16")  # calibrate_tp 16, unify_ranks 8 (override)
    backend = GaudiBackend({"cache_dir": str(tmp_path / "cache")})
    p = service.plan(cell, backend, tmp_path / "cache", materialize=False)
    recipe = backend.calibration_recipe(p.job, p.derivation)
    assert [s.name for s in recipe.steps] == ["check-source", "copy-source"]
    ((path, cfg),) = recipe.writes.items()
    assert path == p.job.layout.quant_config and cfg["dump_stats_path"].endswith(
        "/llama-3.1-405b-instruct/g2/inc_output")
    commands = service.plan_commands(cell, backend, tmp_path)
    assert commands[-1].argv[:4] == ("python3", "step-5-unify_measurements.py", "-r", "8")
