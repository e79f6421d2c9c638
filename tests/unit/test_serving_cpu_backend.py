"""The cpu backend's serving commands and env follow DESIGN's "vLLM on CPU" facts."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness import backends
from harness.backends.cpu.serving import PLUGIN_ENTRY_DIR
from harness.backends.cpu.serving import host_has_fp8_kv_cache
from harness.matrix import load_matrix
from harness.serving.inc_plugin import KV_QDQ_ENV
from harness.serving.inc_plugin import READY_MARK
from harness.settings import StageSettings


@pytest.fixture(scope="module")
def cells():
    return {c.id: c for c in load_matrix("smoke-cpu").cells}


def _backend(**options):
    return backends.get("cpu", options)


def _flag(argv, flag):
    return argv[argv.index(flag) + 1]


def test_a_bf16_cell_serves_eager_offline_with_an_explicit_kv_cache_and_its_short_name(cells):
    cell = cells["tiny-llama/cpu/tp1/bf16-kv-auto"]
    cmd = _backend().serve_command(cell, 8123, None)
    argv = list(cmd.argv)
    assert Path(argv[0]).name == "vllm" and argv[1:3] == ["serve", cell.model.path]
    assert _flag(argv, "--served-model-name") == "tiny-llama"
    assert _flag(argv, "--port") == "8123" and _flag(argv, "--host") == "127.0.0.1"
    assert "--enforce-eager" in argv
    assert _flag(argv, "--kv-cache-memory-bytes") == "256M"
    assert _flag(argv, "--kv-cache-dtype") == "auto"
    assert "--quantization" not in argv
    assert cmd.env["HF_HUB_OFFLINE"] == "1" and cmd.env["HF_DATASETS_OFFLINE"] == "1"
    assert cmd.env["VLLM_TARGET_DEVICE"] == "cpu"
    assert "QUANT_CONFIG" not in cmd.env and "VLLM_CPU_OMP_THREADS_BIND" not in cmd.env


def test_an_fp8_cell_serves_with_inc_and_the_calibrations_quant_config(cells):
    cell = cells["tiny-llama/cpu/tp1/fp8-kv-fp8"]
    calibration = SimpleNamespace(quant_config=Path("/cache/maxabs_quant_cpu.json"))
    spec = _backend(fp8_kv_cache="native").server_spec(cell, 8123, calibration)
    argv = list(spec.command.argv)
    assert _flag(argv, "--quantization") == "inc"
    assert _flag(argv, "--kv-cache-dtype") == "fp8"
    assert spec.command.env["QUANT_CONFIG"] == "/cache/maxabs_quant_cpu.json"
    assert spec.command.env["PYTHONPATH"].split(":")[0] == str(PLUGIN_ENTRY_DIR)
    assert spec.ready_marks == (READY_MARK,)
    assert spec.facts["weights"].startswith("fp8 via INC")
    assert spec.facts["emulated"] == "none"


def test_on_a_cpu_without_avx512_the_fp8_kv_cache_is_emulated_and_said_so(cells):
    cell = cells["tiny-llama/cpu/tp1/fp8-kv-fp8"]
    backend = _backend(fp8_kv_cache="emulated")
    cmd = backend.serve_command(cell, 8123, SimpleNamespace(quant_config="q.json"))
    assert _flag(list(cmd.argv), "--kv-cache-dtype") == "auto"
    assert cmd.env[KV_QDQ_ENV] == "fp8"
    facts = backend.serving_facts(cell)
    assert facts["emulated"] == "kv_cache" and "emulated" in facts["kv_cache"]


def test_the_fp8_kv_capability_follows_the_cpu_flags_vllm_needs():
    assert host_has_fp8_kv_cache(frozenset({"avx2", "avx512f"}))
    assert host_has_fp8_kv_cache(frozenset({"avx2", "amx_tile"}))
    assert not host_has_fp8_kv_cache(frozenset({"avx", "avx2", "fma"}))


def test_the_moe_ep_cell_binds_one_thread_per_rank_and_enables_expert_parallelism(cells):
    cell = cells["tiny-moe/cpu/tp2-ep2/fp8-kv-fp8"]
    backend = _backend(fp8_kv_cache="native")
    cmd = backend.serve_command(cell, 8123, SimpleNamespace(quant_config="q.json"))
    argv = list(cmd.argv)
    assert _flag(argv, "--tensor-parallel-size") == "2"
    assert "--enable-expert-parallel" in argv
    assert cmd.env["VLLM_CPU_OMP_THREADS_BIND"] == "0|1"
    assert cmd.env["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
    assert backend.serving_facts(cell)["emulated"] == "moe_experts"


def test_matrix_settings_reach_the_command(cells):
    cell = cells["tiny-llama/cpu/tp1/bf16-kv-auto"]
    settings = StageSettings.model_validate({"serving": {
        "kv_cache_memory": "1G", "enforce_eager": False, "block_size": 16,
        "extra_args": ["--seed", "7"], "env": {"OMP_NUM_THREADS": "1"},
    }})
    cell = dataclasses.replace(cell, settings=settings)
    cmd = _backend().serve_command(cell, 8123, None)
    argv = list(cmd.argv)
    assert _flag(argv, "--kv-cache-memory-bytes") == "1G"
    assert "--enforce-eager" not in argv
    assert _flag(argv, "--block-size") == "16"
    assert argv[-2:] == ["--seed", "7"]
    assert cmd.env["OMP_NUM_THREADS"] == "1"


def test_lm_eval_gets_a_local_tokenizer_so_it_never_asks_the_hub(cells, tmp_path):
    cell = cells["tiny-llama/cpu/tp1/bf16-kv-auto"]
    backend = _backend()
    task = backend.accuracy_task(cell, tmp_path, write=False)
    assert task.name == "gsm8k_synthetic" and task.include_path == tmp_path / "task"
    cmd = backend.accuracy_command(cell, "http://127.0.0.1:8123", task, tmp_path)
    model_args = _flag(list(cmd.argv), "--model_args")
    assert model_args.startswith("model=tiny-llama,")
    assert f"tokenizer={cell.model.path}" in model_args
    assert "tokenizer_backend=huggingface" in model_args
    assert cmd.env["HF_DATASETS_OFFLINE"] == "1"


def test_the_benchmark_runs_once_per_concurrency_and_saves_its_json(cells, tmp_path):
    cell = cells["tiny-llama/cpu/tp1/bf16-kv-auto"]
    plan = _backend().plan_throughput(cell, tmp_path)
    assert len(plan) == len(cell.settings.throughput.concurrencies)
    for concurrency, cmd in zip(cell.settings.throughput.concurrencies, plan, strict=True):
        argv = list(cmd.argv)
        assert argv[1:3] == ["bench", "serve"]
        assert _flag(argv, "--max-concurrency") == str(concurrency)
        assert _flag(argv, "--model") == "tiny-llama"
        assert _flag(argv, "--tokenizer") == cell.model.path
        assert _flag(argv, "--result-filename") == f"bench_c{concurrency}.json"
        assert _flag(argv, "--percentile-metrics") == "ttft,tpot,itl,e2el"
        assert "--save-result" in argv and "--ignore-eos" in argv


def test_goodput_slos_become_bench_flags(cells, tmp_path):
    cell = cells["tiny-llama/cpu/tp1/bf16-kv-auto"]
    settings = StageSettings.model_validate(
        {"throughput": {"concurrencies": [2], "goodput": {"ttft": 2000, "tpot": 100}}}
    )
    cmd = _backend().plan_throughput(dataclasses.replace(cell, settings=settings), tmp_path)[0]
    argv = list(cmd.argv)
    i = argv.index("--goodput")
    assert argv[i + 1: i + 3] == ["ttft:2000", "tpot:100"]


def test_the_matrix_backend_options_of_a_cell_reach_its_commands(cells):
    """backend_options come with the cell (matrix, then overrides), not with the backend."""
    cell = dataclasses.replace(
        cells["tiny-llama/cpu/tp1/fp8-kv-fp8"],
        backend_options={"fp8_kv_cache": "emulated", "env": {"EXTRA_FLAG": True, "N": 2}},
    )
    backend = _backend(fp8_kv_cache="native")  # the cell's option wins over the run's
    cmd = backend.serve_command(cell, 8123, SimpleNamespace(quant_config="q.json"))
    assert cmd.env[KV_QDQ_ENV] == "fp8" and backend.serving_facts(cell)["emulated"] == "kv_cache"
    assert cmd.env["EXTRA_FLAG"] == "true" and cmd.env["N"] == "2"
    bench = backend.bench_command(cell, "http://127.0.0.1:8123", 1, Path("/tmp/w"))
    assert bench.env["EXTRA_FLAG"] == "true"


def test_an_emulation_asked_for_says_so_rather_than_blaming_the_cpu(cells):
    cell = cells["tiny-llama/cpu/tp1/fp8-kv-fp8"]
    forced = dataclasses.replace(cell, backend_options={"fp8_kv_cache": "emulated"})
    assert _backend().serving_facts(forced)["kv_cache"].endswith(
        "(QDQ into a BF16 cache: backend_options.fp8_kv_cache)"
    )


def test_vllm_bench_serve_keeps_per_request_figures_and_the_installed_parser_accepts_it(tmp_path):
    """--save-detailed: vLLM 0.32 vllm/benchmarks/serve.py:1749 (per-request ttfts, itls, ...)."""
    from vllm.benchmarks.serve import add_cli_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from harness.backends.cpu import CpuBackend
    from harness.matrix import load_matrix

    cell = next(c for c in load_matrix("smoke-cpu").cells if not c.is_fp8)
    argv = CpuBackend().bench_command(cell, "http://127.0.0.1:8000", 1, tmp_path).argv
    assert "--save-detailed" in argv
    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    args = parser.parse_args(list(argv[argv.index("serve") + 1:]))
    assert args.save_detailed and args.save_result
