"""Recipes: the CPU backend's rank workers and derivation commands, running steps, caching."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

from harness.backends.cpu import CpuBackend
from harness.calibration import service
from harness.calibration.recipe import CalibrationJob
from harness.calibration.recipe import Derivation
from harness.calibration.recipe import Recipe
from harness.calibration.recipe import Step
from harness.calibration.recipe import StepFailed
from harness.calibration.recipe import run_recipe
from harness.calibration.recipe import run_step
from harness.cell import Cell
from harness.cell import ModelFacts
from harness.errors import HarnessError
from harness.process import Command
from harness.settings import CalibrationSettings
from harness.settings import StageSettings


def job(tmp_path: Path, tp=1, ep=1, moe=False) -> CalibrationJob:
    return CalibrationJob(
        model="tiny", source=str(tmp_path / "model"), architecture="llama", moe=moe,
        num_experts=8 if moe else 0, device="cpu", tp=tp, ep=ep, dataset=tmp_path / "d.pkl",
        samples=8, batch_size=1, out=tmp_path / "entry", max_seq_len=32,
    )


def test_cpu_calibration_runs_one_worker_per_rank_with_the_rendezvous_env(tmp_path):
    r = CpuBackend().calibration_recipe(job(tmp_path, tp=2), None)
    (step,) = r.steps
    assert step.parallel and len(step.commands) == 2
    ports = {c.env["MASTER_PORT"] for c in step.commands}
    assert len(ports) == 1
    for rank, c in enumerate(step.commands):
        assert c.argv[1:4] == ("-m", "harness.calibration.worker", "--spec")
        assert c.argv[-2:] == ("--rank", str(rank))
        assert (c.env["RANK"], c.env["LOCAL_RANK"], c.env["WORLD_SIZE"]) == (
            str(rank), str(rank), "2")
        assert c.env["OMP_NUM_THREADS"] == "1" and c.env["HF_HUB_OFFLINE"] == "1"
    assert r.world == 2 and r.results[1].name == "rank1.json"


def test_cpu_calibration_writes_the_scripts_configs_valid_for_inc_on_cpu(tmp_path):
    r = CpuBackend().calibration_recipe(job(tmp_path), None)
    quant = r.writes[r.quant_config]
    measure = next(v for k, v in r.writes.items() if k.name == "maxabs_measure_cpu.json")
    assert measure["use_qdq"] and measure["mode"] == "MEASURE"
    assert quant["use_qdq"] and quant["scale_method"] == "maxabs_pow2"
    assert quant["dump_stats_path"] == str(r.measurement_dir / "inc_output")
    assert r.measurement_dir == tmp_path / "entry" / "tiny" / "cpu"
    spec = next(v for k, v in r.writes.items() if k.name == "spec.json")
    assert spec["steps"] == ("measure", "postprocess", "quantize")


def test_a_cpu_unify_is_the_toolkit_command_with_step5_flags(tmp_path):
    d = Derivation(tp=1, ep=1, world=1, unify_ranks=1, expert_parallel=True)
    r = CpuBackend().derivation_recipe(job(tmp_path, tp=2, ep=2, moe=True), d)
    (step,) = r.steps
    (cmd,) = step.commands
    assert cmd.argv[1:4] == ("-m", "harness.calibration.tools", "unify")
    assert cmd.argv[-3:] == ("-r", "1", "-u")
    assert r.measurement_dir == tmp_path / "entry" / "derived-tp1-ep1" / "tiny" / "cpu"
    assert r.writes[r.quant_config]["dump_stats_path"] == str(r.measurement_dir / "inc_output")


def test_a_cpu_expand_unifies_postprocesses_expands_then_quantizes_at_the_new_layout(tmp_path):
    d = Derivation(tp=2, ep=2, world=2, unify_ranks=1, expert_parallel=True, skip_scales=True,
                   postprocess=True, expand_world=2)
    r = CpuBackend().derivation_recipe(job(tmp_path, tp=2, ep=2, moe=True), d)
    assert [s.name for s in r.steps] == ["unify", "postprocess", "expand", "quantize"]
    unify, post, expand, quantize = (s.commands for s in r.steps)
    assert unify[0].argv[-4:] == ("-r", "1", "-u", "-s")
    assert post[0].argv[-1].endswith("cpu-unified-tp1-post")
    assert expand[0].argv[-2:] == ("-w", "2")
    assert len(quantize) == 2 and quantize[1].env["RANK"] == "1"
    spec = next(v for k, v in r.writes.items() if k.name == "spec.json")
    assert spec["steps"] == ("quantize",) and (spec["tp"], spec["ep"]) == (2, 2)


def test_more_ranks_than_cores_is_refused_with_the_fix(tmp_path):
    with pytest.raises(HarnessError, match="64 calibration ranks on a .*lower tp/ep"):
        CpuBackend().calibration_recipe(job(tmp_path, tp=64), None)


def _py(code: str) -> Command:
    return Command((sys.executable, "-c", code))


def test_a_failed_rank_stops_the_others_and_reports_its_log(tmp_path):
    step = Step("ranks", (_py("import time; time.sleep(60)"),
                          _py("import sys; print('rank 1 broke'); sys.exit(3)")), parallel=True)
    with pytest.raises(StepFailed, match="(?s)exited with status 3.*rank 1 broke"):
        run_step(step, tmp_path, timeout_s=30)


def test_a_step_that_outlives_its_timeout_is_stopped(tmp_path):
    step = Step("ranks", (_py("import time; time.sleep(60)"),), parallel=True)
    with pytest.raises(StepFailed, match="timed out after 0.5 s"):
        run_step(step, tmp_path, timeout_s=0.5)


def test_a_step_check_turns_output_into_a_failure(tmp_path):
    step = Step("ray", (_py("print(8)"),),
                check=lambda out: None if out.strip().endswith("16") else "only 8 HPUs")
    with pytest.raises(StepFailed, match="only 8 HPUs"):
        run_step(step, tmp_path, timeout_s=30)


def test_a_recipe_writes_its_configs_first_and_copies_its_quant_config_last(tmp_path):
    src, dst = tmp_path / "q.json", tmp_path / "out" / "q2.json"
    script = f"import pathlib; assert pathlib.Path({str(src)!r}).is_file()"
    r = Recipe((Step("s", (_py(script),)),), tmp_path, dst, 1,
               writes={src: {"mode": "QUANTIZE", "dump_stats_path": "/a/inc_output"}},
               quant_copy=(src, dst, tmp_path / "x" / "inc_output"))
    times = run_recipe(r, tmp_path / "logs", 30)
    assert set(times) == {"s"}
    assert json.loads(dst.read_text())["dump_stats_path"] == str(tmp_path / "x" / "inc_output")


# the service with a backend whose recipe writes a small 2-rank set without INC -------------

WRITE_SET = """
import json, pathlib, sys
d = pathlib.Path(sys.argv[1]); d.mkdir(parents=True, exist_ok=True)
counter = pathlib.Path(sys.argv[2]); counter.write_text(str(int(counter.read_text() or 0) + 1))
for r in range(2):
    nodes = {"model.layers.0.mlp.down_proj": {"inputs": [[[1.0 + r]]], "params": {"weight": [[0.5 * (r + 1)]]}}}
    doc = {"GlobalRank": None, "LocalRank": r, "Mode": "DynamicRange", "Nodes": nodes}
    (d / f"inc_output_hooks_maxabs_{r}_2.json").write_text(json.dumps(doc))
    (d / f"inc_output_hooks_maxabs_{r}_2_mod_list.json").write_text(json.dumps(list(nodes)))
"""


class ScriptBackend(CpuBackend):
    """The CPU backend with its rank workers replaced by a script (real files, no INC)."""

    def __init__(self, counter: Path) -> None:
        super().__init__()
        self.counter = counter
        counter.write_text("")

    def calibration_recipe(self, job, derivation):
        real = super().calibration_recipe(job, derivation)
        cmd = Command((sys.executable, "-c", WRITE_SET, str(real.measurement_dir),
                       str(self.counter)))
        return Recipe((Step("calibrate", (cmd,)),), real.measurement_dir, real.quant_config,
                      real.world, real.writes)


def cell(tmp_path: Path, samples: int = 8) -> Cell:
    (tmp_path / "model").mkdir(exist_ok=True)
    (tmp_path / "d.pkl").write_bytes(b"data")
    cs = CalibrationSettings(dataset=str(tmp_path / "d.pkl"), samples=samples, calibrate_tp=2,
                             unify_ranks=1)
    return Cell(model=ModelFacts(name="tiny", path=str(tmp_path / "model")), device="cpu",
                quantization="fp8", settings=StageSettings(calibration=cs))


def test_ensure_calibrates_once_per_key_and_derives_the_cells_set(tmp_path):
    backend = ScriptBackend(tmp_path / "runs")
    a = service.ensure(cell(tmp_path), backend, tmp_path / "cache")
    assert backend.counter.read_text() == "1"
    assert a.derived and a.world == 1 and a.calibrated_world == 2
    assert a.derivation == ("unify -r 1",)
    unified = json.loads(a.range_files[0].read_text())["Nodes"]["model.layers.0.mlp.down_proj"]
    assert unified == {"inputs": [[[2.0]]], "params": {"weight": [[1.0]]}}  # max over ranks
    assert json.loads(a.quant_config.read_text())["dump_stats_path"] == str(a.dump_stats_path)
    again = service.ensure(cell(tmp_path), backend, tmp_path / "cache")
    assert backend.counter.read_text() == "1"  # cached: neither calibrated nor derived again
    assert again == a
    done = json.loads((a.cache_entry / "done.json").read_text())
    assert set(done["derived"]) == {"tp1-ep1"}


def test_a_changed_key_recalibrates_into_its_own_entry(tmp_path):
    backend = ScriptBackend(tmp_path / "runs")
    a = service.ensure(cell(tmp_path), backend, tmp_path / "cache")
    b = service.ensure(cell(tmp_path, samples=16), backend, tmp_path / "cache")
    assert backend.counter.read_text() == "2"
    assert a.cache_entry != b.cache_entry and a.key != b.key


def test_an_interrupted_entry_is_wiped_not_reused(tmp_path):
    backend = ScriptBackend(tmp_path / "runs")
    p = service.plan(cell(tmp_path), backend, tmp_path / "cache")
    stale = p.job.layout.measurement_dir / "inc_output_hooks_maxabs_MAXABS_POW2_0_2.json"
    stale.parent.mkdir(parents=True)
    stale.write_text("stale scales of an older run")
    service.ensure(cell(tmp_path), backend, tmp_path / "cache")
    assert not stale.exists()


def test_a_missing_model_directory_is_named_before_anything_runs(tmp_path):
    c = cell(tmp_path)
    (tmp_path / "model").rmdir()
    with pytest.raises(HarnessError, match="model directory not found"):
        service.ensure(c, ScriptBackend(tmp_path / "runs"), tmp_path / "cache")


def test_a_plan_that_cannot_run_says_why_instead_of_crashing(tmp_path):
    c = cell(tmp_path)
    wide = dataclasses.replace(c, settings=c.settings.model_copy(update={
        "calibration": c.settings.calibration.model_copy(update={"calibrate_tp": 64})}))
    (cmd,) = CpuBackend({"cache_dir": str(tmp_path)}).plan_calibration(wide, tmp_path)
    assert cmd.argv == ("false",) and "64 calibration ranks" in cmd.description


def test_a_gaudi_plan_without_a_dataset_names_the_setting(tmp_path):
    from harness.backends.gaudi import GaudiBackend

    c = Cell(model=ModelFacts(name="m", hub_id="meta-llama/Llama-3.1-8B-Instruct"), device="g2",
             quantization="fp8")
    (cmd,) = GaudiBackend({"cache_dir": str(tmp_path)}).plan_calibration(c, tmp_path)
    assert "settings.calibration.dataset is required" in cmd.description


def test_the_cells_backend_env_reaches_every_calibration_rank(tmp_path):
    c = dataclasses.replace(cell(tmp_path), backend_options={"env": {"KMP_AFFINITY": "disabled"}})
    commands = CpuBackend({"cache_dir": str(tmp_path)}).plan_calibration(c, tmp_path)
    ranks = [cmd for cmd in commands if "harness.calibration.worker" in cmd.argv]
    assert len(ranks) == 2 and all(cmd.env["KMP_AFFINITY"] == "disabled" for cmd in ranks)
