"""Command lines both backends share: lm-eval against a server, and `vllm bench serve`.

Backends decide the values (model source, tokenizer, env, task); these functions only spell
the tools' flags, in the order the seeds write them (seed 003's lm_eval line).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.process import Command
from harness.settings import AccuracySettings
from harness.settings import ThroughputSettings

BENCH_PERCENTILE_METRICS = "ttft,tpot,itl,e2el"
BENCH_PERCENTILES = "50,99"
LM_EVAL_OUTPUT = "lm_eval_output"


@dataclass(frozen=True)
class AccuracyTask:
    """The lm-eval task to run: its name and, for a local dataset, the folder of its YAML."""

    name: str
    include_path: Path | None = None
    dataset: str = "hub"  # hub | local | synthetic
    detail: str = ""


def gen_kwargs_arg(gen_kwargs: Mapping[str, Any]) -> str:
    """`{"temperature": 0, "do_sample": False}` -> `temperature=0,do_sample=False` (lm-eval's
    --gen_kwargs syntax)."""
    return ",".join(f"{k}={v}" for k, v in gen_kwargs.items())


def lm_eval_command(
    *,
    task: AccuracyTask,
    served_name: str,
    base_url: str,
    max_length: int,
    settings: AccuracySettings,
    output_dir: Path,
    env: Mapping[str, str],
    extra_model_args: Mapping[str, str] | None = None,
    program: str = "lm_eval",
) -> Command:
    """`lm_eval --model local-completions ...` as in seed 003, plus the matrix's options."""
    model_args = [
        f"model={served_name}",
        f"max_gen_toks={settings.max_gen_toks}",
        f"max_length={max_length}",
        f"base_url={base_url}/v1/completions",
    ]
    if settings.num_concurrent > 1:
        model_args.append(f"num_concurrent={settings.num_concurrent}")
    model_args += [f"{k}={v}" for k, v in (extra_model_args or {}).items()]
    argv = [
        program,
        "--model", "local-completions",
        "--tasks", task.name,
        "--model_args", ",".join(model_args),
        "--batch_size", str(settings.batch_size),
    ]
    if settings.num_fewshot is not None:
        argv += ["--num_fewshot", str(settings.num_fewshot)]
    if settings.limit is not None:
        argv += ["--limit", str(settings.limit)]
    if settings.gen_kwargs:
        argv += ["--gen_kwargs", gen_kwargs_arg(settings.gen_kwargs)]
    if settings.apply_chat_template:
        argv.append("--apply_chat_template")
    if settings.fewshot_as_multiturn:
        argv.append("--fewshot_as_multiturn")
    if task.include_path is not None:
        argv += ["--include_path", str(task.include_path)]
    argv += ["--log_samples", "--output_path", str(output_dir / LM_EVAL_OUTPUT)]
    return Command(
        tuple(argv), dict(env), description=f"lm-eval {task.name} ({task.dataset} dataset)"
    )


def num_prompts(settings: ThroughputSettings, concurrency: int) -> int:
    """The matrix's num_prompts, else 4 x concurrency (at least 8) so the load is steady."""
    if settings.num_prompts is not None:
        return settings.num_prompts
    return max(8, 4 * concurrency)


def bench_result_name(concurrency: int) -> str:
    return f"bench_c{concurrency}.json"


def bench_command(
    *,
    served_name: str,
    tokenizer: str,
    base_url: str,
    concurrency: int,
    settings: ThroughputSettings,
    result_dir: Path,
    env: Mapping[str, str],
    trust_remote_code: bool = False,
    program: str = "vllm",
    prefix: tuple[str, ...] | None = None,
) -> Command:
    """`vllm bench serve` at one concurrency, saving its JSON result in `result_dir`; `prefix`
    replaces `vllm bench serve` by a client taking the same flags (benchmark_serving.py)."""
    argv = [
        *(prefix or (program, "bench", "serve")),
        "--backend", "vllm",
        "--base-url", base_url,
        "--endpoint", "/v1/completions",
        "--model", served_name,
        "--tokenizer", tokenizer,
        "--dataset-name", settings.dataset_name,
    ]
    if settings.dataset_name == "random":
        argv += [
            "--random-input-len", str(settings.input_len),
            "--random-output-len", str(settings.output_len),
        ]
    argv += [
        "--num-prompts", str(num_prompts(settings, concurrency)),
        "--max-concurrency", str(concurrency),
        "--ignore-eos",
        "--percentile-metrics", BENCH_PERCENTILE_METRICS,
        "--metric-percentiles", BENCH_PERCENTILES,
    ]
    if settings.goodput:
        argv += ["--goodput", *(f"{k}:{v:g}" for k, v in settings.goodput.items())]
    if trust_remote_code:
        argv.append("--trust-remote-code")
    argv += [
        "--save-result",
        "--result-dir", str(result_dir),
        "--result-filename", bench_result_name(concurrency),
    ]
    if prefix is None:
        # per-request TTFT/ITL/latency in the result (the report's distributions); vLLM 0.32
        # vllm/benchmarks/serve.py:1749 drops them without it. The fork's benchmark_serving.py
        # (deepseek_r1 @016b6bd, line 737) always keeps them and has no such flag.
        argv.append("--save-detailed")
    return Command(
        tuple(argv),
        dict(env),
        description=f"vllm bench serve at concurrency {concurrency}",
    )
