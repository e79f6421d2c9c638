"""Serving-stack profiles: every command a gaudi cell emits belongs to one real stack.

Two stacks serve FP8 on Gaudi and each rejects flags of the other (issue 12, DESIGN "Two
serving stacks on Gaudi"):

* ``vllm-gaudi``: upstream vLLM (the installed 0.32, whose parser is the real one) plus the
  vllm-project/vllm-gaudi plugin (main @ 091bbadda10b); seeds 000/001/002.
* ``vllm-fork``: HabanaAI/vllm-fork branch ``deepseek_r1`` (@ 016b6bd20585); seed 003.

A profile is data plus small functions; the serving mixin asks it how to spell each command.
References below are ``repo:path:line@commit``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from harness.cell import Cell

StackName = Literal["vllm-gaudi", "vllm-fork"]
DEFAULT_STACK: StackName = "vllm-gaudi"
GAUDI_COMMIT = "091bbadda10bee4fd3f6d0efc1844d2610dd2707"
FORK_COMMIT = "016b6bd20585da105f184226909d7c7953e6367f"
# seed 003 ("采用 FP8 精度"): these checkpoints ship block-scaled FP8 weights
FP8_ARCHITECTURES = frozenset({"deepseek_v3", "kimi_k2"})
# vllm-fork scripts/quant_configs/inc_quant_per_channel_bf16kv.json@016b6bd, lines 14-17: the
# blocklist that keeps the KV cache in BF16 names MLA's latent caches only (DeepSeek-V3 family)
FORK_BF16KV_ARCHITECTURES = frozenset({"deepseek_v3", "kimi_k2"})


@dataclass(frozen=True)
class StackProfile:
    """How one stack spells serving, EP, the benchmark client and Ray's env."""

    name: StackName
    procedure: str
    # the server entry point: `vllm serve MODEL` or the fork's api_server with --model
    serve_prefix: tuple[str, ...]
    model_flag: str | None
    server_label: str
    weights_load_device: bool  # has --weights-load-device
    expert_parallel: Literal["flag", "env"]
    bench: Literal["vllm-bench", "benchmark_serving"]
    # names a Ray worker receives from the driver without being exported before `ray start`
    ray_prefixes: tuple[str, ...]
    ray_substrings: tuple[str, ...]
    ray_names: frozenset[str]
    ray_extra_var: str | None  # env var naming more names to forward, if the stack has one
    quant_config: Literal["calibration", "fork-configs"]


VLLM_GAUDI = StackProfile(
    name="vllm-gaudi",
    procedure="seeds 000/001/002: vllm serve + vllm-gaudi calibration/",
    serve_prefix=("vllm", "serve"),
    model_flag=None,
    server_label="vllm serve",
    # vllm 0.32 engine/arg_utils.py has no --weights-load-device; vllm-gaudi
    # vllm_gaudi/platform.py:265-273@091bbad loads INC weights to CPU itself
    weights_load_device=False,
    # vllm 0.32 engine/arg_utils.py:1273: --enable-expert-parallel (a boolean flag)
    expert_parallel="flag",
    bench="vllm-bench",
    # vllm 0.32 ray/ray_env.py:36-47 (prefixes, PYTHONHASHSEED) and vllm-gaudi
    # vllm_gaudi/platform.py:42-44,70@091bbad (names containing HPU, RAY or VLLM, *_SOCKET_IFNAME)
    ray_prefixes=("VLLM_", "FLASH_ATTENTION_", "LMCACHE_", "NCCL_", "UCX_", "HF_", "HUGGING_FACE_"),
    ray_substrings=("HPU", "RAY", "VLLM"),
    ray_names=frozenset(
        {"PYTHONHASHSEED", "GLOO_SOCKET_IFNAME", "HCCL_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"}
    ),
    ray_extra_var="VLLM_RAY_EXTRA_ENV_VARS_TO_COPY",  # vllm 0.32 ray/ray_env.py:33-34,94
    quant_config="calibration",
)

VLLM_FORK = StackProfile(
    name="vllm-fork",
    procedure="seed 003: HabanaAI/vllm-fork deepseek_r1 (start_vllm.sh, set_head_node.sh)",
    # scripts/quickstart/start_vllm.sh:198-200@016b6bd
    serve_prefix=("python3", "-m", "vllm.entrypoints.openai.api_server"),
    model_flag="--model",
    server_label="the fork's OpenAI api_server",
    weights_load_device=True,  # vllm/engine/arg_utils.py:338@016b6bd
    # vllm/engine/arg_utils.py:446-450@016b6bd: --enable-expert-parallel takes a value and
    # defaults to True; the EP size is VLLM_EP_SIZE (start_vllm.sh:123, set_head_node.sh:60,
    # vllm/model_executor/models/deepseek_v2.py:109)
    expert_parallel="env",
    bench="benchmark_serving",  # seed 003 runs benchmarks/benchmark_serving.py
    # vllm/executor/ray_distributed_executor.py:385-392@016b6bd copies VLLM_* and PT_* only
    ray_prefixes=("VLLM_", "PT_"),
    ray_substrings=(),
    ray_names=frozenset(),
    ray_extra_var=None,
    quant_config="fork-configs",
)

PROFILES: dict[str, StackProfile] = {p.name: p for p in (VLLM_GAUDI, VLLM_FORK)}


def profile(cell: Cell) -> StackProfile:
    """The cell's stack (backend_options.stack, overrides applied); default vllm-gaudi."""
    name = cell.backend_options.get("stack") or DEFAULT_STACK
    found = PROFILES.get(str(name))
    if found is None:  # BackendOptions' Literal refuses this at load; a hand-built cell may not
        raise ValueError(
            f"{cell.id}: backend_options.stack={name!r} is unknown; use {' or '.join(PROFILES)}"
        )
    return found


def ray_forwards(stack: StackProfile, name: str) -> bool:
    """Whether Ray workers of this stack receive `name` from the serving process."""
    return (
        name in stack.ray_names
        or name.startswith(stack.ray_prefixes)
        or any(s in name for s in stack.ray_substrings)
    )


def not_forwarded(stack: StackProfile, env: dict[str, str]) -> list[str]:
    """Env names of a serve command that Ray workers would not see (export before ray start)."""
    return sorted(n for n in env if not ray_forwards(stack, n))


@dataclass(frozen=True)
class Checkpoint:
    """What the weights are stored as, and how the harness knows."""

    quant_method: str | None  # config.json quantization_config.quant_method, None: not quantized
    known_from: str  # "config.json <path>" or the assumption made


def checkpoint(cell: Cell) -> Checkpoint:
    """Read `<model.path>/config.json` when reachable; else assume from the architecture.

    Both stacks refuse `--quantization inc` on a checkpoint whose config says
    `quant_method: fp8` (vllm 0.32 vllm/config/model.py:1441-1449; fork vllm/config.py:611-619
    @016b6bd), so this decides the serve flags."""
    path = cell.model.path
    if path:
        config = Path(path) / "config.json"
        try:
            data = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            pass
        else:
            qcfg = data.get("quantization_config") or data.get("compression_config") or {}
            method = str(qcfg.get("quant_method") or "").lower() or None
            return Checkpoint(method, f"config.json {config}")
    if cell.model.architecture in FP8_ARCHITECTURES:
        return Checkpoint(
            "fp8",
            f"assumed fp8 for architecture {cell.model.architecture} (seed 003), config.json not "
            "readable here; preflight reads it on the nodes",
        )
    return Checkpoint(
        None, "assumed unquantized: config.json not readable here; preflight reads it"
    )


def cell_reason(cell: Cell) -> str | None:
    """Why the cell's stack cannot serve it (a load error naming the key), or None."""
    stack = profile(cell)
    key = f"backend_options.stack={stack.name}"
    s = cell.settings.serving
    if s.weights_load_device and not stack.weights_load_device:
        return (
            f"{key}: settings.serving.weights_load_device is a vllm-fork flag; upstream vLLM "
            "rejects --weights-load-device (vllm-gaudi loads INC weights to CPU by itself, "
            "vllm_gaudi/platform.py:265-273): drop it or use stack vllm-fork"
        )
    if (
        stack.name == "vllm-fork"
        and cell.is_fp8
        and cell.kv_cache_dtype == "auto"
        and cell.model.architecture not in FORK_BF16KV_ARCHITECTURES
        and not cell.backend_options.get("quant_configs_dir")
    ):
        return (
            f"{key}: kv_cache_dtype auto on {cell.model.architecture}: the fork's "
            "inc_quant_per_channel_bf16kv.json blocklists DeepSeek's latent_cache_k/v only, "
            "so this model's k_cache/v_cache would stay quantized; use stack vllm-gaudi or "
            "backend_options.quant_configs_dir with a config that blocklists them"
        )
    if stack.name == "vllm-gaudi" and measured_with_expert_parallel(cell) and cell.ep == 1:
        return (
            f"{key}: calibrate_model.sh measures any model named *deepseek* with "
            "--expert-parallel (vllm-gaudi calibration/calibrate_model.sh:226-231), so each "
            f"rank's scales cover its EP-local experts; serve it the same way: set ep: {cell.tp} "
            "on this cell"
        )
    return None


def measured_with_expert_parallel(cell: Cell) -> bool:
    """calibrate_model.sh:165-166,226-227@091bbad: the -m folder's name, lowered, contains
    "deepseek" -> step 2 and 4 run with --expert-parallel."""
    name = str(cell.model.source).rstrip("/").rsplit("/", 1)[-1].lower()
    return cell.is_fp8 and cell.runs("calibration") and cell.tp > 1 and "deepseek" in name


def bf16_kv_warning(cell: Cell) -> str | None:
    """vllm-gaudi with kv_cache_dtype auto: INC patches the VLLMKVCache modules
    (vllm_gaudi/attention/backends/hpu_attn.py:40,224 @091bbad) unless QUANT_CONFIG's blocklist
    names them, and calibrate_model.sh's quant config (lines 63-70) blocklists none of them for
    Llama (empty) or DeepSeek (lm_head, mlp.gate): a BF16 KV cache is not established."""
    if profile(cell).name != "vllm-gaudi" or not cell.is_fp8 or cell.kv_cache_dtype != "auto":
        return None
    return (
        "WARNING kv_cache_dtype auto: calibrate_model.sh's quant config does not blocklist the "
        "KV-cache modules INC patches, so whether the KV cache stays BF16 is not established; "
        "check the server log or give a QUANT_CONFIG that blocklists them"
    )
