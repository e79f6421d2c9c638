"""Gaudi calibration commands and env against the seeds and calibrate_model.sh, flag for flag."""

from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path

import pytest

from harness.backends.gaudi import GaudiBackend
from harness.backends.gaudi.calibration import RAY_HPU_CHECK
from harness.backends.gaudi.calibration import parse_ray_hpus
from harness.calibration import config as configs
from harness.calibration import service
from harness.cell import Cell
from harness.matrix import load_matrix
from harness.settings import CalibrationSettings

DATA = "/data/calibration/open_orca_gpt4_tokenized_llama.calibration_1000.pkl"
SCRIPTS = "/data/vllm-gaudi/calibration"
BUFFER = "/data/vllm-gaudi/calibration/quant_config_buffer.json"
RAY = ("python3", "-c", 'import ray; ray.init(); print(int(ray.available_resources()["HPU"]))')


@pytest.fixture(scope="module")
def backend(tmp_path_factory) -> GaudiBackend:
    return GaudiBackend({"cache_dir": str(tmp_path_factory.mktemp("cache"))})


def cell_of(matrix: str, cell_id: str) -> Cell:
    return next(c for c in load_matrix(matrix).cells if c.id == cell_id)


def on_vllm_gaudi_with_unify_and_expand(cell: Cell) -> Cell:
    """The seed-000 MoE procedure ("Advanced Usage for MoE Models", vllm-gaudi docs
    calibration_multi_node.md): calibrate once at EP8, unify to 1 with -u -s, postprocess with
    -d, expand; a vllm-gaudi procedure, so the cell is put on that stack (the shipped
    deepseek-r1-multinode serves DeepSeek on the fork, which measures at the serving layout)."""
    cs = cell.settings.calibration.model_copy(update={
        "calibrate_tp": 8, "calibrate_ep": 8, "unify_ranks": 1, "expert_parallel_unify": True,
        "expand": True, "postprocess": True, "dataset": "NeelNanda/pile-10k", "samples": 512,
    })
    return dataclasses.replace(
        cell, backend_options={**cell.backend_options, "stack": "vllm-gaudi"},
        settings=cell.settings.model_copy(update={"calibration": cs}),
    )


def plan(backend: GaudiBackend, cell: Cell) -> tuple[service.Plan, list]:
    p = service.plan(cell, backend, Path(backend.options["cache_dir"]), materialize=False)
    steps = list(backend.calibration_recipe(p.job, p.derivation).steps)
    if p.derivation is not None and p.derivation.expand_world is not None:
        steps += backend.derivation_recipe(p.job, p.derivation).steps
    return p, steps


def test_single_node_is_calibrate_model_sh_with_the_seed_flags_and_no_extra_env(backend):
    p, steps = plan(backend, cell_of("nightly-g2", "llama-3.1-8b/g2/tp1/fp8-kv-fp8_inc"))
    (step,) = steps
    (cmd,) = step.commands
    out = f"/data/fp8_output/{p.key.dirname}"
    assert cmd.argv == ("./calibrate_model.sh", "-m", "meta-llama/Llama-3.1-8B-Instruct",
                        "-d", DATA, "-o", out, "-b", "128", "-l", "1000", "-t", "1")
    # -l 1000: the pickle's rows; step-1-prepare-calibration-dataset.py:20 (@091bbad) takes
    # ds.head(-l), so seed 000's -l 4096 measured these 1000 samples too
    assert cmd.cwd == SCRIPTS and dict(cmd.env) == {} and cmd.node is None
    assert p.key.dirname.startswith("llama-3.1-8b-instruct-g2-tp1-ep1-")


def test_tp16_on_two_nodes_unified_to_8_is_seed_000_step_7(backend):
    p, steps = plan(backend, cell_of("nightly-g2", "llama-3.1-405b/g2/tp8/fp8-kv-fp8_inc"))
    assert [s.name for s in steps] == ["ray-hpus", "quant-config-buffer", "calibrate_model.sh"]
    ray, buffer, calibrate = (s.commands[0] for s in steps)
    assert ray.argv == RAY and RAY_HPU_CHECK in ray.argv
    assert buffer.argv == ("touch", BUFFER)
    out = f"/data/fp8_output/{p.key.dirname}"
    assert calibrate.argv == (
        "./calibrate_model.sh", "-m", "meta-llama/Llama-3.1-405B-Instruct", "-d", DATA,
        "-o", out, "-b", "128", "-l", "1000", "-t", "16", "-r", "8")
    assert dict(calibrate.env) == {
        "QUANT_CONFIG": BUFFER,
        "PT_HPU_ENABLE_LAZY_COLLECTIVES": "true",
        "EXPERIMENTAL_WEIGHT_SHARING": "0",
        "VLLM_SKIP_WARMUP": "true",
    }
    assert {c.node for s in steps for c in s.commands} == {0}
    assert p.key.tp == 16 and p.job.world == 16


def test_the_ray_check_needs_as_many_hpus_as_the_calibration_tp(backend):
    _, steps = plan(backend, cell_of("nightly-g2", "llama-3.1-405b/g2/tp8/fp8-kv-fp8_inc"))
    check = steps[0].check
    assert check is not None
    assert check("2026-01-01 INFO worker.py: Connecting to existing Ray cluster\n16\n") is None
    problem = check("8\n")
    assert problem is not None and "Ray reports 8 HPUs" in problem and "ray status" in problem
    assert parse_ray_hpus("no number here") is None


def test_the_multinode_seed_cells_use_seed_001_flags(backend):
    matrix = "deepseek-r1-multinode"
    p8, steps8 = plan(backend, cell_of(matrix, "llama-3.1-405b/g2/tp8/fp8-kv-fp8_inc"))
    p16, steps16 = plan(backend, cell_of(matrix, "llama-3.1-405b/g2-n2/tp16/fp8-kv-fp8_inc"))
    assert p8.key == p16.key  # calibrated once at TP16, served at TP8 and TP16
    tail8 = steps8[-1].commands[0].argv[7:]
    tail16 = steps16[-1].commands[0].argv[7:]
    assert tail8 == ("-b", "1", "-l", "10", "-t", "16", "-r", "8")
    assert tail16 == ("-b", "1", "-l", "10", "-t", "16")


@pytest.mark.parametrize("ep", [16, 32])
def test_deepseek_ep_is_calibrated_at_ep8_unified_to_tp1_postprocessed_and_expanded(backend, ep):
    nodes = ep // 8
    cid = f"deepseek-r1-0528/g2-n{nodes}/tp{ep}-ep{ep}/fp8-kv-fp8_inc"
    p, steps = plan(backend, on_vllm_gaudi_with_unify_and_expand(
        cell_of("deepseek-r1-multinode", cid)))
    out = f"/data/fp8_output/{p.key.dirname}"
    model = f"{out}/deepseek-r1-0528-g2"
    calibrate, unify, post, expand = (s.commands[0] for s in steps)
    # vllm-gaudi docs/configuration/calibration/calibration.md:33 (@091bbad): DeepSeek
    # calibrates on NeelNanda/pile-10k, 512 samples; calibrate_model.sh:217-222 prepares a
    # dataset given by name itself
    assert calibrate.argv == (
        "./calibrate_model.sh", "-m", "/data/hf_models/DeepSeek-R1-0528-G2",
        "-d", "NeelNanda/pile-10k", "-o", out, "-b", "1", "-l", "512", "-t", "8", "-u")
    assert dict(calibrate.env) == {}  # TP8 fits one node
    assert unify.argv == ("python3", "step-5-unify_measurements.py", "-m", f"{model}/g2/",
                          "-r", "1", "-o", f"{model}/g2-unified-tp1/", "-u", "-s")
    assert post.argv == ("python3", "step-3-postprocess-measure.py",
                         "-m", f"{model}/g2-unified-tp1/", "-o", f"{model}/g2-unified-tp1-post/",
                         "-d")
    assert expand.argv == ("python3", "step-6-expand-measurements.py",
                           "-m", f"{model}/g2-unified-tp1-post/",
                           "-o", f"{model}/g2-unified-tp1-post-expand-ep{ep}", "-w", str(ep))
    assert {c.cwd for c in (unify, post, expand)} == {SCRIPTS}
    assert (p.key.tp, p.key.ep) == (8, 8)


def test_the_expanded_set_is_served_through_a_copy_of_the_quant_config_pointing_at_it(backend):
    cell = on_vllm_gaudi_with_unify_and_expand(
        cell_of("deepseek-r1-multinode", "deepseek-r1-0528/g2-n2/tp16-ep16/fp8-kv-fp8_inc"))
    p = service.plan(cell, backend, Path(backend.options["cache_dir"]), materialize=False)
    assert p.derivation is not None
    r = backend.derivation_recipe(p.job, p.derivation)
    model = p.job.out / "deepseek-r1-0528-g2"
    assert r.quant_copy == (model / "maxabs_quant_g2.json",
                            model / "maxabs_quant_g2-unified-tp1-post-expand-ep16.json",
                            model / "g2-unified-tp1-post-expand-ep16" / "inc_output")
    assert r.quant_config == r.quant_copy[1] and r.world == 16


def test_an_ep_calibration_unified_in_place_later_is_seed_000s_step_5(backend):
    base = cell_of("deepseek-r1-multinode", "deepseek-r1-0528/g2-n2/tp16-ep16/fp8-kv-fp8_inc")
    cs = CalibrationSettings(dataset=DATA, samples=5000, batch_size=1, calibrate_tp=8,
                             calibrate_ep=8, unify_ranks=4, expert_parallel_unify=True,
                             scripts_dir=SCRIPTS, output_dir="/data/fp8_output")
    cell = dataclasses.replace(base, tp=4, ep=4, nodes=1,
                               backend_options={"stack": "vllm-gaudi"},
                               settings=base.settings.model_copy(update={"calibration": cs}))
    p = service.plan(cell, backend, Path(backend.options["cache_dir"]), materialize=False)
    fused = backend.calibration_recipe(p.job, p.derivation).steps[-1].commands[0]
    assert fused.argv[-5:] == ("-t", "8", "-r", "4", "-u")
    assert p.derivation is not None
    (step,) = backend.derivation_recipe(p.job, p.derivation).steps
    qd = f"{p.job.out}/deepseek-r1-0528-g2/g2/"
    assert step.commands[0].argv == ("python3", "step-5-unify_measurements.py", "-r", "4",
                                      "-m", qd, "-o", qd, "-u")


def _script_json(text: str, out: str, model: str, device: str) -> dict:
    """A tmp_config line of calibrate_model.sh, after bash quoting, with $1/$2/$3 filled in."""
    return json.loads(text.replace("$1", out).replace("$2", model).replace("$3", device))


# the config strings as calibrate_model.sh echoes them (bash has already removed its escapes)
MEASURE_DEFAULT = ('{"method": "HOOKS","mode": "MEASURE","observer": "maxabs","allowlist": '
                   '{"types": [], "names":  []},"blocklist": {"types": [], "names":  []},'
                   '"quantize_weight": false,"dump_stats_path": "$1/$2/$3/inc_output",'
                   '"calibration_sample_interval": 1}')
MEASURE_DEEPSEEK = ('{"method": "HOOKS","mode": "MEASURE","observer": "maxabs","allowlist": '
                    '{"types": [], "names":  []},"blocklist": {"types": [], "names":  '
                    '["lm_head", "mlp\\\\.gate\\\\b"]},"quantize_weight": false,'
                    '"dump_stats_path": "$1/$2/$3/inc_output","calibration_sample_interval": 1}')
QUANT_MIXTRAL = ('{"mode": "QUANTIZE","observer": "maxabs","scale_method": "maxabs_hw", '
                 '"scale_format": "CONST","allowlist": {"types": [],"names": []},"blocklist": '
                 '{"types": [],"names": ["self_attn", "lm_head"]},'
                 '"dump_stats_path": "$1/$2/$3/inc_output"}')
QUANT_DEEPSEEK = ('{"mode": "QUANTIZE","observer": "maxabs","scale_method": "maxabs_hw", '
                  '"scale_format": "scalar", "allowlist": {"types": [],"names": []},'
                  '"blocklist": {"types": [],"names": ["lm_head", "mlp\\\\.gate\\\\b"]},'
                  '"dump_stats_path": "$1/$2/$3/inc_output"}')
QUANT_DEFAULT = ('{"mode": "QUANTIZE","observer": "maxabs","scale_method": "maxabs_hw",'
                 '"allowlist": {"types": [],"names": []},"blocklist": {"types": [],"names": []},'
                 '"dump_stats_path": "$1/$2/$3/inc_output"}')


@pytest.mark.parametrize(
    ("builder", "text", "model"),
    [
        (configs.measure_config, MEASURE_DEFAULT, "llama-3.1-405b-instruct"),
        (configs.measure_config, MEASURE_DEEPSEEK, "deepseek-r1-0528-g2"),
        (configs.quant_config, QUANT_MIXTRAL, "mixtral-8x7b-instruct-v0.1"),
        (configs.quant_config, QUANT_DEEPSEEK, "deepseek-r1-0528-g2"),
        (configs.quant_config, QUANT_DEFAULT, "llama-3.1-405b-instruct"),
    ],
    ids=["measure-default", "measure-deepseek", "quant-mixtral", "quant-deepseek",
         "quant-default"],
)
def test_the_configs_the_harness_expects_are_the_ones_the_script_writes(builder, text, model):
    out = "/nfs/fp8_output"
    assert builder(Path(out), model, "g2") == _script_json(text, out, model, "g2")


def test_seed_003_v31_calibration_on_the_fork_is_run_inc_calib_sh(backend):
    """Seed 003 "1.1 校准 DeepSeek-V3.1" (multi-node): `cd vllm-fork && bash
    scripts/run_inc_calib.sh --model /data/hf_models/DeepSeek-V3.1-G2 --wd 16 --nprompts 5000`
    (HabanaAI/vllm-fork deepseek_r1 @016b6bd scripts/run_inc_calib.sh:24-48 for the flags)."""
    cell = cell_of("deepseek-r1-multinode", "deepseek-v3.1/g2-n2/tp16-ep16/fp8-kv-fp8_inc")
    p, steps = plan(backend, cell)
    assert p.derivation is None and p.job.stack == "vllm-fork"
    measure, copy = (s.commands[0] for s in steps)
    assert measure.argv == tuple(shlex.split(
        "bash scripts/run_inc_calib.sh --model /data/hf_models/DeepSeek-V3.1-G2 --wd 16 "
        "--nprompts 5000"))
    assert measure.cwd == "/workspace/vllm-fork" and measure.node == 0
    assert "export QUANT_CONFIG=/workspace/vllm-fork/scripts/quant_configs/" \
        "inc_measure_with_fp8kv_config.json on every node" in measure.description.replace(
            "export\nQUANT", "export QUANT")
    # run_inc_calib.sh:57-61 deletes the workspace on the next run: the set is copied out,
    # renamed to the harness's prefix (the stage counts inc_output_hooks_maxabs_<r>_16)
    assert copy.argv[0:2] == ("sh", "-c")
    assert "/workspace/vllm-fork/scripts/nc_workspace_measure_kvcache\"/inc_measure_output_*" \
        in copy.argv[2]
    recipe = backend.calibration_recipe(p.job, None)
    assert recipe.world == 16 and recipe.quant_copy is not None
    assert recipe.quant_copy[0] == Path(
        "/workspace/vllm-fork/scripts/quant_configs/inc_quant_per_channel_with_fp8kv_config.json")
    assert recipe.quant_copy[2] == recipe.measurement_dir / "inc_output"


def test_a_fork_cell_asking_for_unify_or_expand_is_refused_with_the_fix(backend):
    base = cell_of("deepseek-r1-multinode", "deepseek-r1-0528/g2-n2/tp16-ep16/fp8-kv-fp8_inc")
    cs = base.settings.calibration.model_copy(update={"calibrate_tp": 8, "calibrate_ep": 8,
                                                      "unify_ranks": 1, "expand": True})
    cell = dataclasses.replace(base, settings=base.settings.model_copy(update={"calibration": cs}))
    (cmd,) = service.plan_commands(cell, backend, Path("/w"))
    assert cmd.argv == ("false",)
    assert "vllm-fork procedure has no unify/expand step" in cmd.description
