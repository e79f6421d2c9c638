"""Stack profiles: selection and load errors, the FP8-checkpoint decision, Ray env, bench JSON.

Upstream references: vllm-project/vllm-gaudi main @091bbadda10b, HabanaAI/vllm-fork
deepseek_r1 @016b6bd20585, and the installed vLLM 0.32 (file:line given per test).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from harness import backends
from harness.backends.gaudi import stacks
from harness.cell import Cell
from harness.cell import Stage
from harness.errors import HarnessError
from harness.errors import MatrixError
from harness.matrix import load_matrix
from harness.serving.bench import parse_result

WORKDIR = Path("/runs/r1/cells/c/serving")


def _matrix(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(
        "name: t\nbackend: gaudi\nmodels:\n"
        "  llama: {hub_id: meta-llama/Llama-3.1-8B-Instruct, architecture: llama}\n"
        "  ds: {path: /data/DeepSeek-R1-G2, architecture: deepseek_v3, moe: true,"
        " num_experts: 256}\n" + text,
        encoding="utf-8",
    )
    return path


def _cell(**options: Any) -> Cell:
    cells = {c.id: c for c in load_matrix("nightly-g2").cells}
    cell = cells["llama-3.1-8b/g2/tp1/fp8-kv-fp8_inc"]
    return dataclasses.replace(cell, backend_options={**cell.backend_options, **options})


def test_the_default_stack_is_vllm_gaudi_and_overrides_pick_one_per_cell(tmp_path: Path) -> None:
    path = _matrix(tmp_path, (
        "axes: {device: [g2], model: [llama], quantization: [fp8], kv_cache_dtype: [fp8_inc],"
        " tp: [1, 2]}\n"
        "overrides:\n  - cells: 'llama/g2/tp2/*'\n    backend_options: {stack: vllm-fork}\n"
    ))
    gaudi = backends.get("gaudi", {})
    by_tp = {c.tp: gaudi.stack_name(c) for c in load_matrix(path).cells}
    assert by_tp == {1: "vllm-gaudi", 2: "vllm-fork"}


def test_an_unknown_stack_is_a_load_error_naming_the_key(tmp_path: Path) -> None:
    path = _matrix(tmp_path, "backend_options: {stack: vllm-forks}\naxes: {device: [g2]}\n")
    with pytest.raises(MatrixError, match="backend_options.stack: Input should be"):
        load_matrix(path)


def test_weights_load_device_on_vllm_gaudi_is_a_load_error(tmp_path: Path) -> None:
    """vLLM 0.32's parser has no --weights-load-device (test_gaudi_stacks_argv); vllm-gaudi
    loads INC weights to CPU itself (vllm_gaudi/platform.py:265-273 @091bbad)."""
    path = _matrix(tmp_path, (
        "axes: {device: [g2], model: [llama]}\n"
        "settings: {serving: {weights_load_device: cpu}}\n"
    ))
    with pytest.raises(MatrixError) as err:
        load_matrix(path)
    assert err.value.key == "cell llama/g2/tp1/bf16-kv-auto"
    assert "backend_options.stack=vllm-gaudi: settings.serving.weights_load_device" in str(err.value)
    fork = _matrix(tmp_path, (
        "backend_options: {stack: vllm-fork}\naxes: {device: [g2], model: [llama]}\n"
        "settings: {serving: {weights_load_device: cpu}}\n"
    ))
    assert len(load_matrix(fork).cells) == 1


def test_the_forks_bf16kv_config_is_refused_for_a_model_it_does_not_keep_in_bf16(
    tmp_path: Path,
) -> None:
    """inc_quant_per_channel_bf16kv.json @016b6bd blocklists latent_cache_k/v (DeepSeek MLA)
    only: Llama's k_cache/v_cache would be quantized with kv_cache_dtype auto."""
    path = _matrix(tmp_path, (
        "backend_options: {stack: vllm-fork}\n"
        "axes: {device: [g2], model: [llama], quantization: [fp8], kv_cache_dtype: [auto]}\n"
    ))
    with pytest.raises(MatrixError, match="blocklists DeepSeek's latent_cache_k/v only"):
        load_matrix(path)
    own = _matrix(tmp_path, (
        "backend_options: {stack: vllm-fork, quant_configs_dir: /cfg}\n"
        "axes: {device: [g2], model: [llama], quantization: [fp8], kv_cache_dtype: [auto]}\n"
    ))
    assert len(load_matrix(own).cells) == 1


def test_deepseek_measured_with_expert_parallel_must_be_served_with_it(tmp_path: Path) -> None:
    """calibrate_model.sh:226-231 @091bbad adds --expert-parallel for *deepseek* models."""
    path = _matrix(tmp_path, (
        "axes: {device: [g2], model: [ds], quantization: [fp8], tp: [8]}\n"
    ))
    with pytest.raises(MatrixError, match="set ep: 8 on this cell"):
        load_matrix(path)
    ok = _matrix(tmp_path, "axes: {device: [g2], model: [ds], quantization: [fp8], tp: [8], ep: [8]}\n")
    assert [c.id for c in load_matrix(ok).cells] == ["ds/g2/tp8-ep8/fp8-kv-auto"]


@pytest.mark.parametrize("stack", ["vllm-gaudi", "vllm-fork"])
def test_an_fp8_checkpoint_read_from_config_json_gets_no_quantization_flag(
    tmp_path: Path, stack: str
) -> None:
    """vllm 0.32 vllm/config/model.py:1443-1449 and the fork's vllm/config.py:611-619 raise
    "Quantization method specified in the model config (fp8) does not match ... (inc)"."""
    model = tmp_path / "Qwen3-8B-FP8"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(
        {"architectures": ["Qwen3ForCausalLM"], "quantization_config": {"quant_method": "fp8"}}
    ))
    cell = _cell(stack=stack)
    cell = dataclasses.replace(cell, model=dataclasses.replace(cell.model, path=str(model)))
    gaudi = backends.get("gaudi", {})
    cmd = gaudi.serve_command(cell, 8688, None, WORKDIR)
    assert "--quantization" not in cmd.argv
    assert "QUANT_CONFIG" in cmd.env
    assert f"config.json {model / 'config.json'}" in cmd.description
    assert stacks.checkpoint(cell) == stacks.Checkpoint("fp8", f"config.json {model / 'config.json'}")
    (model / "config.json").write_text(json.dumps({"architectures": ["Qwen3ForCausalLM"]}))
    assert gaudi.serve_command(cell, 8688, None, WORKDIR).argv[5 if stack == "vllm-fork" else 3:][:2] == (
        "--quantization", "inc",
    )
    (model / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "awq"}}))
    with pytest.raises(HarnessError, match="quantized with 'awq'"):
        gaudi.serve_command(cell, 8688, None, WORKDIR)


def test_an_unreadable_config_falls_back_to_the_architecture_and_says_so() -> None:
    cells = {c.id: c for c in load_matrix("nightly-g3").cells}
    ds = cells["deepseek-r1-0528/g3/tp8-ep8/fp8-kv-auto"]  # a hub id: no local config.json
    assert stacks.checkpoint(ds).quant_method == "fp8"
    assert "assumed fp8 for architecture deepseek_v3" in stacks.checkpoint(ds).known_from
    llama = cells["llama-3.1-8b/g3/tp1/fp8-kv-fp8_inc"]
    assert stacks.checkpoint(llama).quant_method is None
    assert "assumed unquantized" in stacks.checkpoint(llama).known_from


def test_vllm_gaudi_names_the_env_its_ray_workers_would_not_get() -> None:
    """vllm 0.32 ray/ray_env.py:36-47,94 forwards VLLM_*/HF_*/... and the names listed in
    VLLM_RAY_EXTRA_ENV_VARS_TO_COPY; vllm_gaudi/platform.py:42-44 adds *HPU*/*RAY*/*VLLM* and
    the socket interfaces. QUANT_CONFIG matches none of them."""
    cells = {c.id: c for c in load_matrix("deepseek-r1-multinode").cells}
    cell = dataclasses.replace(
        cells["llama-3.1-405b/g2-n2/tp16/fp8-kv-fp8_inc"], backend_options={"stack": "vllm-gaudi"}
    )
    gaudi = backends.get("gaudi", {})
    exports, export1, check, serve = gaudi.plan(cell, Stage.SERVING, WORKDIR)
    assert serve.env["VLLM_RAY_EXTRA_ENV_VARS_TO_COPY"] == "QUANT_CONFIG"
    assert exports.argv == ("export", f"QUANT_CONFIG={serve.env['QUANT_CONFIG']}")
    assert (exports.node, export1.node, check.argv) == (0, 1, ("ray", "status"))
    assert stacks.ray_forwards(stacks.VLLM_GAUDI, "PT_HPU_ENABLE_LAZY_COLLECTIVES")
    assert not stacks.ray_forwards(stacks.VLLM_FORK, "INC_FORCE_NAIVE_SCALING")
    assert stacks.ray_forwards(stacks.VLLM_FORK, "PT_HPU_RECIPE_CACHE_CONFIG")


def test_the_forks_benchmark_result_parses_like_vllm_bench_serves() -> None:
    """benchmarks/benchmark_serving.py @016b6bd lines 725-741 and 958-985: `request_goodput:`
    (with the colon), no `failed`; num_prompts and max_concurrency added when saving."""
    figures = {f"{s}_{m}_ms": 1.5 for m in ("ttft", "tpot", "itl", "e2el")
               for s in ("mean", "median", "p99")}
    data = {
        "duration": 10.0, "completed": 30, "total_input_tokens": 30720,
        "total_output_tokens": 30720, "request_throughput": 3.0, "request_goodput:": None,
        "output_throughput": 3072.0, "total_token_throughput": 6144.0, **figures,
        "num_prompts": 32, "max_concurrency": 32,
    }
    metrics = parse_result(data, 32, "bench_c32.json")
    assert metrics["output_throughput@c32"] == 3072.0
    assert metrics["failed@c32"] == 2 and metrics["completed@c32"] == 30
    assert "request_goodput@c32" not in metrics
    assert parse_result({**data, "request_goodput:": 2.5}, 32)["request_goodput@c32"] == 2.5


def test_a_sample_count_beyond_the_datasets_rows_is_said_with_what_is_measured(
    tmp_path: Path,
) -> None:
    """step-1-prepare-calibration-dataset.py:16-20 @091bbad: read_pickle, then head(-l)."""
    from harness.backends.gaudi import stack_checks
    from harness.settings import StageSettings

    pd = pytest.importorskip("pandas")
    data = tmp_path / "mine.pkl"
    pd.DataFrame({"system_prompt": ["s"] * 3, "question": ["q"] * 3}).to_pickle(data)
    cell = _cell()
    for dataset, samples, rows in ((str(data), 5, 3), ("/x/open_orca.calibration_1000.pkl", 4096, 1000)):
        settings = StageSettings.model_validate(
            {**cell.settings.model_dump(), "calibration": {"dataset": dataset, "samples": samples}}
        )
        check = stack_checks.calibration_samples(dataclasses.replace(cell, settings=settings))
        assert check.status.value == "warn"
        assert f"step-1 takes head({samples}), so {rows} samples are measured" in check.message
    settings = StageSettings.model_validate(
        {**cell.settings.model_dump(), "calibration": {"dataset": str(data), "samples": 3}}
    )
    ok = stack_checks.calibration_samples(dataclasses.replace(cell, settings=settings))
    assert ok.status.value == "pass"


def test_preflight_checks_the_built_hccl_demo_binary_and_the_forks_files() -> None:
    """hccl_demo Makefile:12 builds ./hccl_demo and run_hccl_demo.py:68,249 (@f623d69) runs
    that binary; the fork cell needs its quant config and benchmark_serving.py on every node."""
    cells = {c.id: c for c in load_matrix("deepseek-r1-multinode").cells}
    cell = cells["deepseek-r1-0528/g2-n2/tp16-ep16/fp8-kv-fp8_inc"]
    gaudi = backends.get("gaudi", {})
    paths = gaudi.preflight_spec(cell)["paths"]
    assert paths["hccl_demo"] == "hccl_demo/hccl_demo"
    assert paths["fork.quant_config"] == (
        "/workspace/vllm-fork/scripts/quant_configs/inc_quant_per_channel_with_fp8kv_config.json"
    )
    assert paths["fork.benchmark_serving"] == "/workspace/vllm-fork/benchmarks/benchmark_serving.py"
    from harness.backends.gaudi import stack_checks

    facts = {"10.0.0.1/n0": {"paths": {"hccl_demo": True, "fork.quant_config": True,
                                       "fork.benchmark_serving": True}},
             "10.0.0.2/n1": {"paths": {"hccl_demo": False, "fork.quant_config": True}}}
    stack_paths = {k: v for k, v in paths.items() if k != "model"}  # model: config.json
    checks = {c.name: c for c in stack_checks.paths_present(cell, facts, stack_paths)}
    assert checks["hccl_demo"].status.value == "fail"
    assert "not found on 10.0.0.2/n1" in checks["hccl_demo"].message
    assert "make" in checks["hccl_demo"].hint
    assert checks["fork.quant_config"].status.value == "pass"
    assert checks["fork.benchmark_serving"].status.value == "fail"
    gaudi_paths = gaudi.preflight_spec(cells["llama-3.1-405b/g2/tp8/fp8-kv-fp8_inc"])["paths"]
    assert "fork.quant_config" not in gaudi_paths  # 405B is on vllm-gaudi (matrix override)
    nightly = {c.id: c for c in load_matrix("nightly-g2").cells}
    assert set(gaudi.preflight_spec(nightly["llama-3.1-8b/g2/tp1/fp8-kv-fp8_inc"])["paths"]) == {
        "hccl_demo"  # a hub id has no local config.json; vllm-gaudi needs no fork files
    }


def test_a_bf16_kv_cell_on_vllm_gaudi_warns_that_bf16_kv_is_not_established() -> None:
    """calibrate_model.sh:63-70 @091bbad: the default (Llama) quant config has an empty
    blocklist; vllm_gaudi/attention/backends/hpu_attn.py:40,224: INC patches VLLMKVCache."""
    cells = {c.id: c for c in load_matrix("nightly-g2").cells}
    gaudi = backends.get("gaudi", {})
    auto = gaudi.serve_command(cells["llama-3.1-8b/g2/tp1/fp8-kv-auto"], 8688, None, WORKDIR)
    assert "WARNING kv_cache_dtype auto" in auto.description
    fp8kv = gaudi.serve_command(cells["llama-3.1-8b/g2/tp1/fp8-kv-fp8_inc"], 8688, None, WORKDIR)
    assert "WARNING" not in fp8kv.description
