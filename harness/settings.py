"""Typed per-stage settings a matrix may set; defaults follow the seeds."""

from __future__ import annotations

import re
from typing import Annotated
from typing import Any
from typing import Literal

from pydantic import BaseModel
from pydantic import BeforeValidator
from pydantic import ConfigDict
from pydantic import Field
from pydantic import field_validator
from pydantic import model_validator

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _message_size(value: Any) -> str:
    """`32m`, `1M`, `4096`: hccl_demo's size syntax, checked at load (not when --plan runs)."""
    from harness.collectives.bandwidth import parse_size
    from harness.errors import HarnessError

    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"a message size is a number with an optional unit, got {value!r}")
    try:
        parse_size(value)
    except HarnessError as exc:
        raise ValueError(str(exc)) from None
    return str(value)


def _env_name(value: Any) -> str:
    if not isinstance(value, str) or not _ENV_NAME.match(value):
        raise ValueError(f"{value!r} is not an environment variable name (letters, digits, _)")
    return value


MessageSize = Annotated[str, BeforeValidator(_message_size)]
EnvName = Annotated[str, BeforeValidator(_env_name)]
PositiveInt = Annotated[int, Field(ge=1)]
PositiveFloat = Annotated[float, Field(gt=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PreflightSettings(_Strict):
    min_free_disk_gb: float = Field(default=2.0, ge=0)
    min_memory_gb: float = Field(default=4.0, ge=0)
    required_env: list[EnvName] = Field(default_factory=list)
    nic_check: bool = True
    # Ray: None = when the cell (or its calibration) spans nodes or a cluster address is set
    use_ray: bool | None = None
    ray_timeout_s: float = Field(default=120.0, gt=0)
    cpu_governor: str | None = "performance"  # seed 003; None: do not check (gaudi)
    vllm_source_dir: str | None = None  # the seed's /workspace/vllm-fork, for the PYTHONPATH fix


class CollectivesSettings(_Strict):
    test: Literal[
        "all_reduce", "all_gather", "reduce_scatter", "all2all", "broadcast", "reduce"
    ] = "all_reduce"
    # cpu, when unset: 1m, 4m, 16m
    sizes: list[MessageSize] = Field(default_factory=lambda: ["32m"], min_length=1)
    loop: int = Field(default=1000, ge=1)
    # default: gaudi all cards of the cell's nodes; cpu world size (>= 2)
    ranks: int | None = Field(default=None, ge=1)
    timeout_s: float = Field(default=600.0, gt=0)
    # MIN MAX
    size_range: list[MessageSize] | None = Field(default=None, min_length=2, max_length=2)
    size_range_inc: int = Field(default=1, ge=1)  # hccl_demo --size_range_inc
    comm_port: int = Field(default=5555, ge=1, le=65535)  # HCCL_COMM_ID=<head>:<port> (seed 003)
    hccl_demo_dir: str = "hccl_demo"  # where `make` built it (relative: to pytest's cwd)
    csv: bool = False  # hccl_demo --result_csv into the stage's directory
    warmup: int = Field(default=2, ge=0)  # gloo only
    # gloo only: fewer than `loop` iterations past this
    max_seconds_per_size: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _range_in_order(self) -> CollectivesSettings:
        from harness.collectives.bandwidth import parse_size

        if self.size_range and parse_size(self.size_range[0]) > parse_size(self.size_range[1]):
            raise ValueError(
                f"size_range {self.size_range[0]}..{self.size_range[1]}: the minimum is larger "
                "than the maximum; write [MIN, MAX]"
            )
        return self


class CalibrationSettings(_Strict):
    dataset: str | None = None  # pickle with system_prompt/question; None: the synthetic set (cpu)
    samples: int = Field(default=64, ge=1)  # calibrate_model.sh -l
    batch_size: int = Field(default=1, ge=1)  # -b
    # TP the measurement runs at (-t); default the cell's
    calibrate_tp: int | None = Field(default=None, ge=1)
    # EP the measurement runs at; default the cell's
    calibrate_ep: int | None = Field(default=None, ge=1)
    unify_ranks: int | None = Field(default=None, ge=1)  # -r
    expert_parallel_unify: bool | None = None  # -u; default: model is MoE
    expand: bool | None = None  # unify to 1 then expand to the cell's EP (MoE)
    postprocess: bool = True
    scale_method: str | None = None  # default: maxabs_hw on g2/g3, a CPU-valid method on cpu
    timeout_s: float = Field(default=3600.0, gt=0)
    enforce_eager: bool = False  # -e
    # cpu backend: make the scales of a Gaudi generation (maxabs_hw + device_for_scales)
    target_device: Literal["g2", "g3"] | None = None
    # cpu backend: prompt tokens per calibration sample
    max_seq_len: int | None = Field(default=256, ge=1)
    output_dir: str | None = None  # -o root (NFS for multi-node); default: the run's cache dir
    scripts_dir: str = "vllm-gaudi/calibration"  # gaudi: where calibrate_model.sh and steps live
    # gaudi multi-node (TP > 8): QUANT_CONFIG buffer file on NFS that every node reads
    quant_config_buffer: str | None = None
    # gaudi: a measurement set already on disk (seed 003 downloads them), used instead of
    # measuring; checked for the cell's world and derived like the harness's own
    source: str | None = None


class ServingSettings(_Strict):
    max_model_len: int = Field(default=2048, ge=1)
    max_num_seqs: int = Field(default=128, ge=1)
    block_size: int | None = Field(default=None, ge=1)
    ready_timeout_s: float = Field(default=900.0, gt=0)
    weights_load_device: str | None = None
    warmup_cache: str | None = None  # PT_HPU_RECIPE_CACHE_CONFIG path (gaudi)
    extra_args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    host: str = "127.0.0.1"  # where the server listens; clients use it too
    port: int | None = Field(default=None, ge=1, le=65535)  # None: a free port per server
    dtype: str = "bfloat16"
    kv_cache_memory: str | None = None  # cpu: --kv-cache-memory-bytes (default 256M)
    enforce_eager: bool | None = None  # default: on for cpu (DESIGN), off on gaudi
    trust_remote_code: bool = False
    max_num_batched_tokens: int | None = Field(default=None, ge=1)
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    # third field of PT_HPU_RECIPE_CACHE_CONFIG (seed 003)
    warmup_cache_size_mb: int = Field(default=32768, ge=1)
    smoke_max_tokens: int = Field(default=16, ge=1)


class AccuracySettings(_Strict):
    task: str = "gsm8k"
    dataset_path: str | None = None  # local copy of gsm8k for air-gapped clusters
    limit: int | None = Field(default=None, ge=1)  # problems evaluated; None: all
    num_fewshot: int | None = Field(default=5, ge=0)
    batch_size: int = Field(default=16, ge=1)
    max_gen_toks: int = Field(default=256, ge=1)
    apply_chat_template: bool = False
    fewshot_as_multiturn: bool = False
    gen_kwargs: dict[str, Any] = Field(default_factory=dict)
    timeout_s: float = Field(default=3600.0, gt=0)
    # where gsm8k comes from: None = the backend's default (hub on gaudi, the project's
    # synthetic gsm8k-format set on cpu); "hub" or "synthetic" to force; dataset_path wins
    dataset: Literal["hub", "synthetic"] | None = None
    synthetic_samples: int = Field(default=200, ge=1)  # test problems written for the cpu task
    num_concurrent: int = Field(default=1, ge=1)  # lm-eval requests in flight


class ThroughputSettings(_Strict):
    concurrencies: list[PositiveInt] = Field(default_factory=lambda: [1, 32], min_length=1)
    input_len: int = Field(default=1024, ge=1)
    output_len: int = Field(default=1024, ge=1)
    num_prompts: int | None = Field(default=None, ge=1)  # default: 4 x concurrency
    dataset_name: str = "random"
    # SLOs in ms for vLLM's --goodput, e.g. {"ttft": 2000, "tpot": 100}
    goodput: dict[Literal["ttft", "tpot", "e2el"], PositiveFloat] = Field(default_factory=dict)
    timeout_s: float = Field(default=3600.0, gt=0)
    # runs per concurrency against the same server; the figure is their median (odd: a median
    # that is one of the runs), with min, max and a 95% interval beside it
    repeats: int = Field(default=1, ge=1)

    @field_validator("repeats")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError(f"must be odd (got {value}): the median of an odd count is a run")
        return value

    @field_validator("concurrencies")
    @classmethod
    def _once_each(cls, values: list[int]) -> list[int]:
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise ValueError(
                f"{', '.join(map(str, repeated))} is listed twice: each concurrency runs once "
                "and writes one result file; list it once"
            )
        return values


class StageSettings(_Strict):
    preflight: PreflightSettings = PreflightSettings()
    collectives: CollectivesSettings = CollectivesSettings()
    calibration: CalibrationSettings = CalibrationSettings()
    serving: ServingSettings = ServingSettings()
    accuracy: AccuracySettings = AccuracySettings()
    throughput: ThroughputSettings = ThroughputSettings()


class BackendOptions(_Strict):
    """A matrix's `backend_options` (an override may set them for its cells): how the backend
    runs, not what a stage measures. Unknown keys are load errors, not silently ignored."""

    # added to the environment of every command of the cell (an override's env adds to it)
    env: dict[str, str | int | float | bool] = Field(default_factory=dict)
    # cpu: keep an FP8 KV cache natively or emulate it; default: native where the CPU can
    fp8_kv_cache: Literal["native", "emulated"] | None = None
    ray_address: str | None = None  # an existing Ray cluster, e.g. "192.168.1.101:8850"
    head_ip: str | None = None  # the head node's IP for multi-node commands
    vllm_fork_dir: str | None = None  # gaudi: the vllm-fork checkout (its scripts/quant_configs)
    quant_configs_dir: str | None = None  # gaudi: INC quant configs, if not under vllm_fork_dir
    # gaudi: the serving stack whose flags, env and files the cell uses
    # (harness/backends/gaudi/stacks.py); None: vllm-gaudi (upstream vLLM + the plugin)
    stack: Literal["vllm-gaudi", "vllm-fork"] | None = None

    def as_dict(self) -> dict[str, Any]:
        """Only the keys the matrix set, so that an override adds to the matrix's options."""
        return self.model_dump(exclude_unset=True)
