"""Typed per-stage settings a matrix may set; defaults follow the seeds."""

from __future__ import annotations

from typing import Any
from typing import Literal

from pydantic import BaseModel
from pydantic import ConfigDict
from pydantic import Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PreflightSettings(_Strict):
    min_free_disk_gb: float = 2.0
    min_memory_gb: float = 4.0
    required_env: list[str] = Field(default_factory=list)
    nic_check: bool = True
    # Ray: None = when the cell (or its calibration) spans nodes or a cluster address is set
    use_ray: bool | None = None
    ray_timeout_s: float = 120.0
    cpu_governor: str | None = "performance"  # seed 003; None: do not check (gaudi)
    vllm_source_dir: str | None = None  # the seed's /workspace/vllm-fork, for the PYTHONPATH fix


class CollectivesSettings(_Strict):
    test: str = "all_reduce"
    sizes: list[str] = Field(default_factory=lambda: ["32m"])  # cpu, when unset: 1m, 4m, 16m
    loop: int = 1000
    ranks: int | None = None  # default: gaudi all cards of the cell's nodes; cpu world size (>= 2)
    timeout_s: float = 600.0
    size_range: list[str] | None = Field(default=None, min_length=2, max_length=2)  # MIN MAX
    size_range_inc: int = Field(default=1, ge=1)  # hccl_demo --size_range_inc
    comm_port: int = 5555  # HCCL_COMM_ID=<head>:<port> (seed 003)
    hccl_demo_dir: str = "hccl_demo"  # where `make` built it (relative: to pytest's cwd)
    csv: bool = False  # hccl_demo --result_csv into the stage's directory
    warmup: int = Field(default=2, ge=0)  # gloo only
    max_seconds_per_size: float = 1.0  # gloo only: fewer than `loop` iterations past this


class CalibrationSettings(_Strict):
    dataset: str | None = None  # pickle with system_prompt/question; None: the synthetic set (cpu)
    samples: int = 64  # calibrate_model.sh -l
    batch_size: int = 1  # -b
    calibrate_tp: int | None = None  # TP the measurement runs at (-t); default the cell's
    calibrate_ep: int | None = None  # EP the measurement runs at; default the cell's
    unify_ranks: int | None = None  # -r
    expert_parallel_unify: bool | None = None  # -u; default: model is MoE
    expand: bool | None = None  # unify to 1 then expand to the cell's EP (MoE)
    postprocess: bool = True
    scale_method: str | None = None  # default: maxabs_hw on g2/g3, a CPU-valid method on cpu
    timeout_s: float = 3600.0
    enforce_eager: bool = False  # -e
    # cpu backend: make the scales of a Gaudi generation (maxabs_hw + device_for_scales)
    target_device: Literal["g2", "g3"] | None = None
    max_seq_len: int | None = 256  # cpu backend: prompt tokens per calibration sample
    output_dir: str | None = None  # -o root (NFS for multi-node); default: the run's cache dir
    scripts_dir: str = "vllm-gaudi/calibration"  # gaudi: where calibrate_model.sh and steps live
    # gaudi multi-node (TP > 8): QUANT_CONFIG buffer file on NFS that every node reads
    quant_config_buffer: str | None = None
    # gaudi: a measurement set already on disk (seed 003 downloads them), used instead of
    # measuring; checked for the cell's world and derived like the harness's own
    source: str | None = None


class ServingSettings(_Strict):
    max_model_len: int = 2048
    max_num_seqs: int = 128
    block_size: int | None = None
    ready_timeout_s: float = 900.0
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
    max_num_batched_tokens: int | None = None
    gpu_memory_utilization: float | None = None
    warmup_cache_size_mb: int = 32768  # third field of PT_HPU_RECIPE_CACHE_CONFIG (seed 003)
    smoke_max_tokens: int = 16


class AccuracySettings(_Strict):
    task: str = "gsm8k"
    dataset_path: str | None = None  # local copy of gsm8k for air-gapped clusters
    limit: int | None = None
    num_fewshot: int | None = 5
    batch_size: int = 16
    max_gen_toks: int = 256
    apply_chat_template: bool = False
    fewshot_as_multiturn: bool = False
    gen_kwargs: dict[str, Any] = Field(default_factory=dict)
    timeout_s: float = 3600.0
    # where gsm8k comes from: None = the backend's default (hub on gaudi, the project's
    # synthetic gsm8k-format set on cpu); "hub" or "synthetic" to force; dataset_path wins
    dataset: Literal["hub", "synthetic"] | None = None
    synthetic_samples: int = Field(default=200, ge=1)  # test problems written for the cpu task
    num_concurrent: int = Field(default=1, ge=1)  # lm-eval requests in flight


class ThroughputSettings(_Strict):
    concurrencies: list[int] = Field(default_factory=lambda: [1, 32])
    input_len: int = 1024
    output_len: int = 1024
    num_prompts: int | None = None  # default: 4 x concurrency
    dataset_name: str = "random"
    goodput: dict[str, float] = Field(default_factory=dict)  # e.g. {"ttft": 2000, "tpot": 100}
    timeout_s: float = 3600.0


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
