"""INC (neural-compressor-pt) on CPU: teach it the vLLM MoE modules, then measure or quantize.

Imported only inside calibration rank workers (imports torch and INC at module level).

On CPU INC patches only Linear/Conv2d/EmbeddingBag. Gaudi's MoE path has two more modules:

* `MoeMatmul` (one expert's w13 or w2): INC's own `PatchedMoeMatmul` records the weight maxabs
  and a 0.0 input, because the fused op, not the expert module, consumes the activations.
* `VllmMixtureOfExpertsOp` (the fused op, INC type "dynamic_moe"): INC's patched class calls
  `torch.ops.hpu.mixture_of_experts.*`, which does not exist here. `PatchedCpuMoeOp` measures
  the same things in plain torch: input 0, output 0, and one intermediate amax (the input of
  w2, i.e. silu(gate) * up) per local expert, 0.0 for an expert no token reached. In QUANTIZE
  mode it runs the Q/DQ emulation of Gaudi's FP8 MoE (input, intermediate and weights rounded
  through FP8 with the calibrated scales).

Both are registered in `PATCHED_MODULE_TABLE["cpu"]` before `prepare`/`convert`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from neural_compressor.torch.algorithms.fp8_quant._quant_common.helper_modules import (
    PatchedMoeMatmul,
)
from neural_compressor.torch.algorithms.fp8_quant._quant_common.helper_modules import measure_input
from neural_compressor.torch.algorithms.fp8_quant._quant_common.helper_modules import measure_output
from neural_compressor.torch.algorithms.fp8_quant._quant_common.quant_config import QuantMode
from neural_compressor.torch.algorithms.fp8_quant.model_configs import PATCHED_MODULE_TABLE
from neural_compressor.torch.algorithms.fp8_quant.model_configs import PATCHED_MODULE_TYPES_TABLE
from neural_compressor.torch.algorithms.fp8_quant.model_configs import ModuleInfo
from neural_compressor.torch.algorithms.fp8_quant.model_configs import ModuleType
from neural_compressor.torch.algorithms.fp8_quant.patched_module_base import PatchedModuleBase


class PatchedCpuMoeOp(PatchedModuleBase):
    """CPU stand-in for INC's PatchedVllmMixtureOfExpertsOp (measure and Q/DQ)."""

    def __init__(self, mod: Any, parent: Any, mod_extra_config: Any, *args: Any,
                 **kwargs: Any) -> None:
        super().__init__(mod, parent, mod_extra_config, *args, **kwargs)
        if self.quantization_mode in (QuantMode.QUANTIZE, QuantMode.LOAD):
            self.quant_input = self._mod_extra_config.inputs[0]
            self.quant_intermediate = [
                self._mod_extra_config.inputs[1 + i] for i in range(self.num_experts)
            ]

    def forward_measure(self, x: torch.Tensor, topk_ids: torch.Tensor,
                        topk_weights: torch.Tensor) -> torch.Tensor:
        measure_input((x,), observer=self._mod_extra_config.inputs)
        out, amax = self.orig_mod.run(x, topk_ids, topk_weights)
        measure_output([out, *amax], self._mod_extra_config.outputs)
        return out

    def forward_qdq(self, x: torch.Tensor, topk_ids: torch.Tensor,
                    topk_weights: torch.Tensor) -> torch.Tensor:
        qx = self.quant_input(x)
        out = torch.zeros(x.shape, dtype=torch.float32)
        routed = self.orig_mod.expert_inputs(x, topk_ids, topk_weights)
        for i, (tokens, weights) in enumerate(routed):
            if tokens.numel() == 0:
                continue
            w13, w2 = self.w13_list[i], self.w2_list[i]  # patched: weights fp8, transposed
            gate, up = torch.matmul(qx[tokens], w13.dequant_weights(w13.weight)).chunk(2, dim=-1)
            mid = self.quant_intermediate[i](F.silu(gate) * up)
            y = torch.matmul(mid, w2.dequant_weights(w2.weight)) * weights[:, None].to(x.dtype)
            out.index_add_(0, tokens, y.float())
        return out.to(x.dtype)

    def forward_quant(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        raise NotImplementedError("real FP8 MoE kernels need a Gaudi; use use_qdq on CPU")

    @classmethod
    def get_type(cls) -> str:
        return "dynamic_moe"

    @classmethod
    def get_module_type(cls) -> ModuleType:
        # INC resizes the outputs to 1 + mod.num_experts (local experts) when it measures
        return ModuleType(1, [], 2, True)


def register_moe_modules() -> None:
    """Make INC's CPU tables know `MoeMatmul` and `VllmMixtureOfExpertsOp` (idempotent)."""
    table, types = PATCHED_MODULE_TABLE["cpu"], PATCHED_MODULE_TYPES_TABLE["cpu"]
    table["MoeMatmul"] = ModuleInfo("linear", PatchedMoeMatmul)
    table["VllmMixtureOfExpertsOp"] = ModuleInfo("dynamic_moe", PatchedCpuMoeOp)
    types.setdefault("linear", ModuleType(1, ["weight"], 1, False))
    types["dynamic_moe"] = PatchedCpuMoeOp.get_module_type()


def prepare_measure(model: torch.nn.Module, config_path: Path) -> torch.nn.Module:
    """Patch `model` for MEASURE with the JSON config at `config_path`."""
    from neural_compressor.torch.quantization import FP8Config
    from neural_compressor.torch.quantization import prepare

    register_moe_modules()
    return prepare(model, FP8Config.from_json_file(str(config_path)))


def finalize(model: torch.nn.Module) -> None:
    """Write this rank's range files (`<prefix>_hooks_maxabs_<r>_<w>.{json,npz}`, mod list)."""
    from neural_compressor.torch.quantization import finalize_calibration

    finalize_calibration(model)


def quantize(model: torch.nn.Module, config_path: Path) -> torch.nn.Module:
    """Convert `model` with the QUANTIZE config: computes and saves this rank's scale files."""
    from neural_compressor.torch.quantization import FP8Config
    from neural_compressor.torch.quantization import convert

    register_moe_modules()
    return convert(model, FP8Config.from_json_file(str(config_path)))
