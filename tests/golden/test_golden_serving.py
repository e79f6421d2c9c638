"""Gaudi serving, lm-eval and benchmark commands compared with the seeds, flag for flag.

Seeds (../shared/seeds): 000 and 001 serve Llama-3.1-405B FP8 at TP8 (`--quantization inc
--kv-cache-dtype fp8_inc [--weights-load-device cpu] --tensor-parallel-size 8`); 003 serves
DeepSeek-R1 with INC env by KV dtype, on one node (start_vllm.sh -b 128 -l 16384 -c
/data/warmup_cache) and on two with Ray, checks gsm8k with lm_eval and throughput at
concurrency 1 and 32 (1k in / 1k out); 004 serves Llama-3.1-405B over a Ray cluster at TP8 x
PP4.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path

import pytest

from harness import backends
from harness.backends.gaudi.serving import link_measurements
from harness.backends.gaudi.serving import ray_hpus
from harness.cell import Stage
from harness.matrix import load_matrix
from harness.settings import StageSettings

WORKDIR = Path("/runs/r1/cells/c/serving")
FP8KV_CONFIG = "/workspace/vllm-fork/scripts/quant_configs/inc_quant_per_channel_with_fp8kv_config.json"
BF16KV_CONFIG = "/workspace/vllm-fork/scripts/quant_configs/inc_quant_per_channel_bf16kv.json"


@pytest.fixture(scope="module")
def gaudi():
    return backends.get("gaudi", {})


def _cells(matrix: str) -> dict:
    return {c.id: c for c in load_matrix(matrix).cells}


def _serve(gaudi, cell):
    commands = gaudi.plan(cell, Stage.SERVING, WORKDIR)
    return commands[-1]


def _flag(argv, flag):
    return argv[argv.index(flag) + 1]


def _on_fork(cell):
    return dataclasses.replace(
        cell, backend_options={**cell.backend_options, "stack": "vllm-fork"}
    )


def test_seed_000_405b_serve_line_on_vllm_gaudi_is_the_commands_prefix(gaudi):
    """Seed 000 step 8 (vllm-gaudi docs, calibration/README.md): QUANT_CONFIG is the
    calibration's `<out>/<model>/maxabs_quant_g2.json` (calibrate_model.sh:72,293 @091bbad);
    `--quantization inc` on a BF16 checkpoint."""
    cell = _cells("nightly-g2")["llama-3.1-405b/g2/tp8/fp8-kv-fp8_inc"]
    settings = StageSettings.model_validate(
        {**cell.settings.model_dump(), "serving": {"max_model_len": 2048}}
    )
    cmd = _serve(gaudi, dataclasses.replace(cell, settings=settings))
    seed = shlex.split("vllm serve meta-llama/Llama-3.1-405B-Instruct --quantization inc --kv-cache-dtype "
            "fp8_inc --tensor-parallel-size 8 --max-model-len 2048")
    assert list(cmd.argv[: len(seed)]) == seed
    config = Path(cmd.env["QUANT_CONFIG"])
    assert config.name == "maxabs_quant_g2.json"
    assert config.parent.name == "llama-3.1-405b-instruct"
    assert str(config).startswith("/data/fp8_output/")
    assert "INC_MEASUREMENT_DUMP_PATH_PREFIX" not in cmd.env  # a fork-only variable


def test_seed_001_weights_load_device_is_a_fork_flag(gaudi):
    """Seed 001 serves with `--weights-load-device cpu`: vllm-fork's parser has it
    (vllm/engine/arg_utils.py:338 @016b6bd); vLLM 0.32 has not (test_gaudi_stacks_argv)."""
    cell = _cells("nightly-g2")["llama-3.1-405b/g2/tp8/fp8-kv-fp8_inc"]
    settings = StageSettings.model_validate(
        {**cell.settings.model_dump(), "serving": {"weights_load_device": "cpu"}}
    )
    cmd = _serve(gaudi, _on_fork(dataclasses.replace(cell, settings=settings)))
    argv = list(cmd.argv)
    assert argv[:5] == ["python3", "-m", "vllm.entrypoints.openai.api_server", "--model",
                        "meta-llama/Llama-3.1-405B-Instruct"]
    assert argv[5:12] == ["--quantization", "inc", "--kv-cache-dtype", "fp8_inc",
                          "--weights-load-device", "cpu", "--tensor-parallel-size"]
    assert cmd.env["QUANT_CONFIG"] == FP8KV_CONFIG


@pytest.mark.parametrize("matrix", ["nightly-g2", "nightly-g3"])
@pytest.mark.parametrize("kv", ["fp8_inc", "auto"])
def test_deepseek_fp8_checkpoint_on_vllm_gaudi_gets_quant_config_only(gaudi, matrix, kv):
    """An FP8 checkpoint refuses `--quantization inc` (vllm 0.32 vllm/config/model.py:1443-1449);
    vllm-gaudi's CI serves FP8 checkpoints with QUANT_CONFIG and no --quantization
    (tests/full_tests/ci_e2e_discoverable_tests.sh:82-84 @091bbad). calibrate_model.sh measures
    DeepSeek with --expert-parallel (:226-231), so the cell is TP8 x EP8."""
    device = "g2" if matrix == "nightly-g2" else "g3"
    cell = _cells(matrix)[f"deepseek-r1-0528/{device}/tp8-ep8/fp8-kv-{kv}"]
    cmd = _serve(gaudi, cell)
    argv = list(cmd.argv)
    assert argv[:3] == ["vllm", "serve", str(cell.model.source)]
    assert "--quantization" not in argv
    assert argv[3:5] == ["--kv-cache-dtype", kv]
    assert "--enable-expert-parallel" in argv
    assert _flag(argv, "--tensor-parallel-size") == "8"
    assert _flag(argv, "--max-num-seqs") == "128"
    assert _flag(argv, "--max-model-len") == "16384"
    assert "--trust-remote-code" in argv
    assert Path(cmd.env["QUANT_CONFIG"]).name == f"maxabs_quant_{device}.json"
    # the fork's INC variables exist nowhere in vllm-gaudi (git grep @091bbad finds none)
    assert not {"INC_MEASUREMENT_DUMP_PATH_PREFIX", "VLLM_REQUANT_FP8_INC", "VLLM_EP_SIZE",
                "VLLM_MOE_N_SLICE", "INC_FORCE_NAIVE_SCALING"} & set(cmd.env)
    assert "FP8 checkpoint" in cmd.description and "[stack vllm-gaudi]" in cmd.description


@pytest.mark.parametrize(
    ("kv", "config"), [("fp8_inc", FP8KV_CONFIG), ("auto", BF16KV_CONFIG)], ids=["fp8kv", "bf16kv"]
)
def test_seed_003_single_node_deepseek_on_the_fork_gets_the_inc_env_by_kv_dtype(gaudi, kv, config):
    """Seed 003 "2.2 手动启动" and scripts/quickstart/start_vllm.sh:71-80,123 @016b6bd."""
    cell = _on_fork(_cells("nightly-g2")[f"deepseek-r1-0528/g2/tp8-ep8/fp8-kv-{kv}"])
    cmd = _serve(gaudi, cell)
    argv = list(cmd.argv)
    # start_vllm.sh:198-203: the api_server with --model; no --quantization on FP8 weights
    assert argv[:5] == ["python3", "-m", "vllm.entrypoints.openai.api_server", "--model",
                        str(cell.model.source)]
    assert argv[5:7] == ["--kv-cache-dtype", kv]
    assert "--quantization" not in argv and "--enable-expert-parallel" not in argv
    env = cmd.env
    assert env["QUANT_CONFIG"] == config
    assert env["INC_MEASUREMENT_DUMP_PATH_PREFIX"] == str(WORKDIR / "inc_prefix")
    assert env["VLLM_REQUANT_FP8_INC"] == "1"
    assert env["VLLM_ENABLE_RUNTIME_DEQUANT"] == "1"
    assert env["VLLM_MOE_N_SLICE"] == "1"
    assert env["INC_FORCE_NAIVE_SCALING"] == "1"
    assert env["VLLM_HPU_MARK_SCALES_AS_CONST"] == "false"
    assert env["VLLM_EP_SIZE"] == "8"  # start_vllm.sh:123
    assert env["PT_HPU_RECIPE_CACHE_CONFIG"] == "/data/warmup_cache,false,32768"


def test_seed_003_readiness_waits_for_preparing_model_with_inc(gaudi):
    cell = _cells("nightly-g2")["deepseek-r1-0528/g2/tp8-ep8/fp8-kv-fp8_inc"]
    spec = gaudi.server_spec(cell, 8688, None, WORKDIR)
    assert spec.ready_marks == ("Preparing model with INC",)
    assert spec.facts["stack"] == "vllm-gaudi"
    bf16 = _cells("nightly-g2")["llama-3.1-8b/g2/tp1/bf16-kv-auto"]
    assert gaudi.server_spec(bf16, 8688, None, WORKDIR).ready_marks == ()


def test_a_bf16_checkpoint_gets_no_requant_env_and_a_bf16_cell_no_inc_at_all(gaudi):
    cells = _cells("nightly-g3")
    fp8 = _serve(gaudi, _on_fork(cells["llama-3.1-8b/g3/tp1/fp8-kv-fp8_inc"]))
    assert "VLLM_REQUANT_FP8_INC" not in fp8.env and "VLLM_MOE_N_SLICE" not in fp8.env
    assert fp8.env["INC_FORCE_NAIVE_SCALING"] == "1"
    bf16 = _serve(gaudi, cells["llama-3.1-8b/g3/tp1/bf16-kv-auto"])
    assert "--quantization" not in bf16.argv and "--kv-cache-dtype" not in bf16.argv
    assert not {"QUANT_CONFIG", "INC_MEASUREMENT_DUMP_PATH_PREFIX"} & set(bf16.env)


def test_seed_003_two_node_deepseek_on_the_fork_runs_on_ray_after_exports_and_a_check(gaudi):
    """Seed 003 multi-node: set_head_node.sh:27-60 (exports, VLLM_EP_SIZE=16) then `ray start`;
    the fork's Ray executor copies only VLLM_*/PT_* (ray_distributed_executor.py:385-392
    @016b6bd), so QUANT_CONFIG and INC_* are exported on every node first."""
    cell = _cells("deepseek-r1-multinode")["deepseek-r1-0528/g2-n2/tp16-ep16/fp8-kv-fp8_inc"]
    export0, export1, check, serve = gaudi.plan(cell, Stage.SERVING, WORKDIR)
    assert (export0.node, export1.node) == (0, 1)
    assert export0.argv == export1.argv
    assert export0.argv == (
        "export", "INC_FORCE_NAIVE_SCALING=1",
        f"INC_MEASUREMENT_DUMP_PATH_PREFIX={WORKDIR / 'inc_prefix'}",
        f"QUANT_CONFIG={FP8KV_CONFIG}",
    )
    assert check.argv == ("ray", "status") and check.node == 0
    argv = list(serve.argv)
    assert serve.node == 0
    assert argv[:3] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    assert _flag(argv, "--tensor-parallel-size") == "16"
    assert _flag(argv, "--distributed-executor-backend") == "ray"
    assert _flag(argv, "--kv-cache-dtype") == "fp8_inc"
    assert _flag(argv, "--max-num-seqs") == "512"  # set_head_node.sh:15
    assert _flag(argv, "--max-model-len") == "32768"
    assert _flag(argv, "--dtype") == "bfloat16"
    assert "--enable-expert-parallel" not in argv and "--trust-remote-code" in argv
    assert serve.env["VLLM_EP_SIZE"] == "16"  # set_head_node.sh:60
    assert serve.env["PT_HPU_RECIPE_CACHE_CONFIG"] == "/data/cache/cache_32k_1k_20k_16k,false,32768"
    assert serve.env["PT_HPU_ENABLE_LAZY_COLLECTIVES"] == "true"
    assert serve.env["QUANT_CONFIG"] == FP8KV_CONFIG


def test_the_ray_precheck_reads_hpus_from_ray_status(gaudi):
    cell = _cells("deepseek-r1-multinode")["deepseek-r1-0528/g2-n2/tp16-ep16/fp8-kv-fp8_inc"]
    (_, check), = gaudi.serve_prechecks(cell)
    assert check(" 0.0/16.0 HPU\n 0B/1.2TiB memory") is None
    assert "has 8 HPUs, the cell needs 16" in check(" 0.0/8.0 HPU")
    assert "no HPU resource" in check(" 32.0/32.0 GPU (32.0 used of 32.0 reserved)")  # seed 004
    assert ray_hpus(" 8.0/16.0 HPU") == (8.0, 16.0)


def test_seed_004_tp8_pp4_over_four_nodes(gaudi, tmp_path):
    matrix = tmp_path / "seed-004.yaml"
    matrix.write_text(
        "name: seed-004\nbackend: gaudi\nmodels:\n  llama-3.1-405b:\n"
        "    hub_id: meta-llama/Llama-3.1-405B-Instruct\n    num_attention_heads: 128\n"
        "axes:\n  device: [g2]\n  tp: [8]\n  pp: [4]\n  nodes: [4]\n", encoding="utf-8",
    )
    (cell,) = load_matrix(matrix).cells
    _, serve = gaudi.plan(cell, Stage.SERVING, WORKDIR)
    seed = shlex.split("vllm serve meta-llama/Llama-3.1-405B-Instruct --tensor-parallel-size 8 "
            "--pipeline-parallel-size 4")
    assert list(serve.argv[: len(seed)]) == seed
    assert serve.argv[len(seed): len(seed) + 2] == ("--distributed-executor-backend", "ray")
    assert "QUANT_CONFIG" not in serve.env


def test_seed_003_lm_eval_line(gaudi):
    cell = _cells("nightly-g2")["deepseek-r1-0528/g2/tp8-ep8/fp8-kv-fp8_inc"]
    (cmd,) = gaudi.plan(cell, Stage.ACCURACY, WORKDIR)
    seed = shlex.split("lm_eval --model local-completions --tasks gsm8k --model_args "
        "model=/data/hf_models/DeepSeek-R1-0528-G2,max_gen_toks=4096,max_length=16384,"
        "base_url=http://127.0.0.1:8688/v1/completions --batch_size 16")
    argv = list(cmd.argv)
    assert argv[: len(seed)] == seed
    assert "--log_samples" in argv
    assert _flag(argv, "--output_path") == str(WORKDIR / "lm_eval_output")
    assert cmd.env["no_proxy"] == "127.0.0.1"


def test_seed_003_benchmark_at_concurrency_1_and_32_with_1k_in_1k_out(gaudi):
    cell = _cells("nightly-g2")["deepseek-r1-0528/g2/tp8-ep8/fp8-kv-fp8_inc"]
    commands = gaudi.plan(cell, Stage.THROUGHPUT, WORKDIR)
    assert [_flag(list(c.argv), "--max-concurrency") for c in commands] == ["1", "32"]
    for cmd in commands:
        argv = list(cmd.argv)
        assert argv[:3] == ["vllm", "bench", "serve"]
        assert _flag(argv, "--random-input-len") == "1024"
        assert _flag(argv, "--random-output-len") == "1024"
        assert _flag(argv, "--model") == "/data/hf_models/DeepSeek-R1-0528-G2"
        assert "--save-result" in argv


def _write_set(directory: Path, prefix: str, world: int) -> None:
    directory.mkdir(parents=True)
    for r in range(world):
        for suffix in (".json", ".npz", "_mod_list.json"):
            (directory / f"{prefix}_hooks_maxabs_{r}_{world}{suffix}").write_text("{}")
        (directory / f"{prefix}_hooks_maxabs_MAXABS_HW_{r}_{world}.json").write_text("{}")


def test_the_inc_prefix_links_the_calibrated_set_under_the_stock_configs_dump_path(
    gaudi, tmp_path
):
    _write_set(tmp_path / "meas", "inc_output", 2)
    from types import SimpleNamespace

    calibration = SimpleNamespace(dump_stats_path=tmp_path / "meas" / "inc_output")
    cell = _cells("nightly-g2")["deepseek-r1-0528/g2/tp8-ep8/fp8-kv-fp8_inc"]
    prefix = gaudi.inc_prefix(cell, calibration, tmp_path / "serving")
    target = prefix / "scripts" / "nc_workspace_measure_kvcache"
    names = sorted(p.name for p in target.iterdir())
    assert names == sorted(
        f"inc_measure_output_hooks_maxabs_{r}_2{s}" for r in range(2)
        for s in (".json", ".npz", "_mod_list.json")
    )  # scale files are computed by the serving config's own method, not linked
    link = target / "inc_measure_output_hooks_maxabs_1_2.npz"
    assert link.is_symlink()
    assert link.resolve() == (tmp_path / "meas" / "inc_output_hooks_maxabs_1_2.npz").resolve()


def test_a_stock_config_with_an_absolute_dump_path_cannot_take_the_prefix(tmp_path):
    configs = tmp_path / "quant_configs"
    configs.mkdir()
    (configs / "inc_quant_per_channel_with_fp8kv_config.json").write_text(
        json.dumps({"dump_stats_path": "/abs/inc_output"})
    )
    gaudi = backends.get("gaudi", {"quant_configs_dir": str(configs)})
    cell = _cells("nightly-g2")["deepseek-r1-0528/g2/tp8-ep8/fp8-kv-fp8_inc"]
    from types import SimpleNamespace

    from harness.errors import HarnessError

    with pytest.raises(HarnessError, match="dump_stats_path '/abs/inc_output' is absolute"):
        gaudi.inc_prefix(cell, SimpleNamespace(dump_stats_path=tmp_path), tmp_path / "s")
    with pytest.raises(HarnessError, match="no measurement files"):
        link_measurements(tmp_path / "none" / "inc_output", tmp_path / "t" / "x")


def test_a_multi_node_cell_links_its_set_beside_the_calibration_on_shared_storage(
    gaudi, tmp_path
):
    from types import SimpleNamespace

    _write_set(tmp_path / "nfs" / "meas", "inc_output", 16)
    calibration = SimpleNamespace(
        dump_stats_path=tmp_path / "nfs" / "meas" / "inc_output",
        measurement_dir=tmp_path / "nfs" / "meas",
    )
    cell = _cells("deepseek-r1-multinode")["deepseek-r1-0528/g2-n2/tp16-ep16/fp8-kv-fp8_inc"]
    prefix = gaudi.inc_prefix(cell, calibration, tmp_path / "local-run")
    assert prefix == tmp_path / "nfs" / "inc_prefix-fp8_inc"
    linked = list((prefix / "scripts" / "nc_workspace_measure_kvcache").glob("*_15_16.npz"))
    assert len(linked) == 1


def test_a_cells_vllm_fork_dir_and_env_from_the_matrix_reach_the_server_command(gaudi):
    cell = dataclasses.replace(
        _cells("nightly-g2")["llama-3.1-8b/g2/tp1/fp8-kv-fp8_inc"],
        backend_options={"stack": "vllm-fork", "vllm_fork_dir": "/opt/vllm-fork",
                         "env": {"VLLM_SKIP_WARMUP": True}},
    )
    cmd = gaudi.serve_command(cell, 8688, None, Path("/tmp/w"))
    assert cmd.env["QUANT_CONFIG"] == (
        "/opt/vllm-fork/scripts/quant_configs/inc_quant_per_channel_with_fp8kv_config.json"
    )
    assert cmd.env["VLLM_SKIP_WARMUP"] == "true"
