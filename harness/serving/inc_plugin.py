"""vLLM general plugin: `--quantization inc` with QUANT_CONFIG on vLLM's CPU build.

On Gaudi, vllm-gaudi loads the model in BF16 and then hands it to Intel Neural Compressor
(`prepare` to measure, `convert` to quantize with the measured scales), logging
"Preparing model with INC". vLLM's CPU build has no such path: its own `inc` method is
AutoRound's. This plugin gives the CPU build the Gaudi behaviour:

* `--quantization inc` resolves to a config that loads every layer unquantized (as on HPU);
* after the CPU model runner loads the model, INC converts it with QUANT_CONFIG (joined to
  INC_MEASUREMENT_DUMP_PATH_PREFIX like vllm-gaudi), using INC's own patched modules for
  vLLM's parallel linears, registered for the CPU accelerator (INC registers them for HPU only).

On CPU, INC quantizes only in QDQ form (`use_qdq: true`): FP8 values and scales are real
(e4m3, the cell's measured input scales, per-channel or per-tensor weight scales), the matmul
then runs in BF16 on the dequantized values. vLLM's MoE experts (a fused 3-D op on CPU) are not
INC-patchable; harness/serving/cpu_moe.py rounds their weights (per expert and channel, before
vLLM repacks them) and their input (measured scale) through FP8, and fixes vLLM CPU's expert
parallelism (its fused-MoE kernel ignores the expert map). When the host cannot keep an FP8 KV
cache (vLLM CPU needs AVX-512 for it), `kv_cache_qdq` rounds K/V through FP8 instead.

vLLM finds the plugin through the `vllm.general_plugins` entry point in
`harness/serving/vllm_entry/` (put on PYTHONPATH by the cpu backend) and calls `register()`
in every process; it does nothing unless the engine runs with `--quantization inc`.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from harness.serving.cpu_moe import fp8_moe_method
from harness.serving.cpu_moe import input_qdq_hooks
from harness.serving.cpu_moe import install_ep_fix
from harness.serving.cpu_moe import qdq

ENTRY_POINT = "harness_inc"
READY_MARK = "Preparing model with INC"
# set by the cpu backend when the host cannot keep an FP8 KV cache: fp8 | fp8_e4m3 | fp8_e5m2
KV_QDQ_ENV = "HARNESS_KV_CACHE_QDQ"
_REGISTERED = False

logger = logging.getLogger("vllm.harness_inc")


def register() -> None:
    """Entry point of the plugin; safe to call many times in one process."""
    global _REGISTERED
    if _REGISTERED:
        return
    _REGISTERED = True
    _register_quant_config()
    _patch_cpu_model_runner()
    install_ep_fix()


def _register_quant_config() -> None:
    import torch
    from vllm.model_executor.layers.fused_moe import RoutedExperts
    from vllm.model_executor.layers.fused_moe import UnquantizedFusedMoEMethod
    from vllm.model_executor.layers.linear import LinearBase
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod
    from vllm.model_executor.layers.quantization import register_quantization_config
    from vllm.model_executor.layers.quantization.base_config import QuantizationConfig

    class _KeepWeightLinearMethod(UnquantizedLinearMethod):
        """BF16 linear that keeps `layer.weight` for INC to quantize after loading.

        On hosts with AVX-512 (oneDNN or SGL kernels), vLLM CPU repacks a linear's weight into
        its own format and leaves an empty `weight` behind; INC's patched module then multiplies
        by nothing. vLLM's own opt-out (`_cpu_skip_gemm_dispatch`) keeps the weight and a plain
        F.linear, which is what INC replaces anyway."""

        def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
            layer._cpu_skip_gemm_dispatch = True
            super().process_weights_after_loading(layer)

    @register_quantization_config("inc")
    class HarnessINCConfig(QuantizationConfig):
        """Load BF16 as vllm-gaudi does for INC; INC converts the model after loading."""

        @classmethod
        def get_name(cls) -> str:
            return "inc"

        @classmethod
        def get_supported_act_dtypes(cls) -> list[torch.dtype]:
            return [torch.bfloat16, torch.float16, torch.float32]

        @classmethod
        def get_min_capability(cls) -> int:
            return 0

        @staticmethod
        def get_config_filenames() -> list[str]:
            return []

        @classmethod
        def from_config(cls, config: dict[str, Any]) -> HarnessINCConfig:
            return cls()

        def get_quant_method(self, layer: torch.nn.Module, prefix: str) -> Any:
            if isinstance(layer, LinearBase):
                return _KeepWeightLinearMethod()
            if isinstance(layer, RoutedExperts):
                method = fp8_moe_method(UnquantizedFusedMoEMethod) if _quantize_mode() else (
                    UnquantizedFusedMoEMethod
                )
                return method(layer.moe_config)
            return None


def _quantize_mode() -> bool:
    """True when QUANT_CONFIG asks INC to quantize (not to measure)."""
    try:
        cfg = json.loads(Path(os.environ.get("QUANT_CONFIG", "")).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return str(cfg.get("mode", "")).upper() == "QUANTIZE"


def _patch_cpu_model_runner() -> None:
    try:
        from vllm.v1.worker.cpu_model_runner import CPUModelRunner
    except ImportError:  # not the CPU build: nothing to do
        return
    original = CPUModelRunner.load_model
    if getattr(original, "_harness_inc", False):
        return

    def load_model(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if self.model_config.quantization == "inc":
            self.model = apply_inc(self.model)
        emulated_kv = os.environ.get(KV_QDQ_ENV)
        if emulated_kv:
            kv_cache_qdq(self.model, emulated_kv)

    vars(load_model)["_harness_inc"] = True  # marks the patch, so it is applied once
    CPUModelRunner.load_model = load_model


def resolved_config_path(config_path: str | None = None) -> Path:
    """QUANT_CONFIG with dump_stats_path joined to INC_MEASUREMENT_DUMP_PATH_PREFIX (as on HPU).

    INC itself does not read the prefix; vllm-gaudi joins it. A relative dump path with a prefix
    set gives a rewritten copy of the config in a temporary file.
    """
    path = Path(config_path or os.environ.get("QUANT_CONFIG", ""))
    if not path.is_file():
        raise FileNotFoundError(
            f"QUANT_CONFIG={str(path)!r} is not a file: point it at the INC quantization config "
            "(from the calibration stage) before serving with --quantization inc"
        )
    prefix = os.environ.get("INC_MEASUREMENT_DUMP_PATH_PREFIX")
    cfg = json.loads(path.read_text(encoding="utf-8"))
    dump = cfg.get("dump_stats_path")
    if not prefix or not dump or os.path.isabs(dump):
        return path
    cfg["dump_stats_path"] = os.path.join(prefix, dump)
    fd, name = tempfile.mkstemp(prefix="harness_inc_", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(cfg, fh)
    return Path(name)


def register_vllm_modules_for_cpu() -> None:
    """Map vLLM's parallel linears to INC's patched modules on the CPU accelerator."""
    from neural_compressor.torch.algorithms.fp8_quant._core import patching_common as pc
    from neural_compressor.torch.algorithms.fp8_quant.patched_module_base import (
        PATCHED_MODULE_TABLE,
    )
    from neural_compressor.torch.algorithms.fp8_quant.patched_module_base import (
        PATCHED_MODULE_TYPES_TABLE,
    )

    names = (
        "RowParallelLinear",
        "ColumnParallelLinear",
        "MergedColumnParallelLinear",
        "QKVParallelLinear",
        "ReplicatedLinear",
        "ParallelLMHead",
    )
    PATCHED_MODULE_TABLE["cpu"].update({n: pc._mod_default_dict[n] for n in names})
    PATCHED_MODULE_TYPES_TABLE["cpu"].update(
        {t: pc._mod_types[t] for t in ("linear", "row_parallel_linear")}
    )


def apply_inc(model: Any) -> Any:
    """Prepare (measure) or convert (quantize) the loaded vLLM model with INC."""
    from neural_compressor.torch.quantization import FP8Config
    from neural_compressor.torch.quantization import convert
    from neural_compressor.torch.quantization import prepare

    logger.info("%s..", READY_MARK)
    register_vllm_modules_for_cpu()
    path = resolved_config_path()
    config = FP8Config.from_json_file(str(path))
    if config.measure:
        model = prepare(model, config)
    elif config.quantize:
        model = convert(model, config)
        weights, activations = speed_up_qdq(model)
        logger.info("INC: %d QDQ weights dequantized once, %d activation QDQs streamlined",
                    weights, activations)
        ranges = _range_nodes(json.loads(path.read_text(encoding="utf-8")))
        hooked, missing = input_qdq_hooks(model, ranges)
        if hooked or missing:
            logger.info("INC: %d MoE ops with FP8 expert weights and inputs (QDQ), %d without "
                        "a measured input range", hooked, missing)
    patched = sum(1 for m in model.modules() if type(m).__name__.startswith("Patched"))
    logger.info("INC %s: %d modules patched", "measure" if config.measure else "quantize", patched)
    return model


def speed_up_qdq(model: Any) -> tuple[int, int]:
    """Make INC's CPU QDQ path cost what the math costs, with bit-identical results.

    * The FP8 weight is dequantized at every call although it never changes, and the result
      is an [in, out] tensor whose BF16 matmul is ~6x slower on CPU than the [out, in] layout
      vLLM uses: it is dequantized once and kept as a transposed view of a contiguous
      [out, in] tensor (same values; BLAS reads it transposed).
    * Per-tensor activation QDQ goes through torchao's generic helpers; it becomes the same
      float32 divide, clamp, cast to FP8 and multiply, without their per-call overhead.

    Returns (weights cached, activation QDQs replaced)."""
    import torch

    class _Const(torch.nn.Module):
        harness_const = True

        def __init__(self, value: torch.Tensor) -> None:
            super().__init__()
            self.register_buffer("value", value, persistent=False)

        def forward(self, *_: Any) -> torch.Tensor:
            return self.value

    weights = activations = 0
    for name, module in model.named_modules():
        if not getattr(module, "use_qdq", False):
            continue
        dequant = getattr(module, "dequant_weights", None)
        weight = getattr(module, "weight", None)
        if weight is not None and weight.numel() == 0:
            raise RuntimeError(
                f"INC converted {name} without its weight (empty tensor): vLLM CPU repacked "
                "the weight away before INC ran; the harness's inc linear method must keep it"
            )
        if dequant is not None and weight is not None and not getattr(
            dequant, "harness_const", False
        ):
            with torch.no_grad():
                value = dequant(weight)
                if value.dim() == 2:
                    value = value.t().contiguous().t()
                module.dequant_weights = _Const(value)
            weights += 1
        scale = _scalar_scale(module) if type(module).__name__ == "QuantDequant" else None
        if scale is not None:
            module.forward = _fast_qdq(
                scale, module.lp_dtype,
                float(module.quant_min), float(module.quant_max),
            )
            activations += 1
    return weights, activations


def _scalar_scale(module: Any) -> float | None:
    scale = getattr(module, "scale", None)
    try:
        return float(scale) if scale is not None and getattr(scale, "numel", lambda: 1)() == 1 \
            else None
    except (TypeError, ValueError):
        return None


def _fast_qdq(scale: float, lp_dtype: Any, qmin: float, qmax: float) -> Any:
    def forward(x: Any, *_: Any, **__: Any) -> Any:
        y = (x.float() / scale).clamp(qmin, qmax).to(lp_dtype)
        return (y.float() * scale).to(x.dtype)

    return forward


def _rank() -> tuple[int, int]:
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _range_nodes(config: dict[str, Any]) -> dict[str, Any]:
    """This rank's measured ranges (`Mode: DynamicRange`), or {} when there is no file."""
    rank, world = _rank()
    dump = str(config.get("dump_stats_path", ""))
    path = Path(f"{dump}_hooks_maxabs_{rank}_{world}.json")
    if not path.is_file():
        path = Path(f"{dump}_hooks_maxabs.json")
    if not path.is_file():
        return {}
    nodes: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")).get("Nodes", {})
    return nodes


def kv_cache_qdq(model: Any, kv_dtype: str) -> int:
    """Round K and V through FP8 before attention, as an FP8 KV cache would store them.

    For hosts whose vLLM CPU build cannot keep an FP8 KV cache (it needs AVX-512 or AMX): the
    cache stays BF16, the values in it are the FP8-rounded ones (`x / k_scale` cast to the FP8
    type and back, with vLLM's default k_scale/v_scale of 1.0 when no checkpoint sets them).
    """
    import torch
    from vllm.model_executor.layers.attention.attention import Attention

    dtype = {"fp8": torch.float8_e4m3fn, "fp8_e4m3": torch.float8_e4m3fn,
             "fp8_e5m2": torch.float8_e5m2}[kv_dtype]

    def hook(
        module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if len(args) < 3:
            return args, kwargs
        q, k, v = args[:3]
        ks = float(getattr(module, "_k_scale_float", 1.0) or 1.0)
        vs = float(getattr(module, "_v_scale_float", 1.0) or 1.0)
        return (q, qdq(k, ks, dtype), qdq(v, vs, dtype), *args[3:]), kwargs

    layers = 0
    for module in model.modules():
        if isinstance(module, Attention):
            module.register_forward_pre_hook(hook, with_kwargs=True)
            layers += 1
    logger.info("KV cache %s emulated (QDQ into a BF16 cache) on %d attention layers",
                kv_dtype, layers)
    return layers
