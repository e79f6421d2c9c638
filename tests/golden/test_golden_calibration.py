"""Gaudi calibration commands and env against the seeds and calibrate_model.sh, flag for flag."""

from __future__ import annotations

import dataclasses
import json
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
    p, steps = plan(backend, cell_of("deepseek-r1-multinode", cid))
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
    cell = cell_of("deepseek-r1-multinode", "deepseek-r1-0528/g2-n2/tp16-ep16/fp8-kv-fp8_inc")
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
