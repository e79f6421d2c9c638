"""vLLM CPU MoE: the expert-parallel fix and FP8 (QDQ) for fused experts. Runs in vLLM workers.

Expert parallelism: vLLM's CPU fused-MoE kernel (`cpu_fused_moe`) takes global expert ids but
holds only the rank's local experts, and is never given the expert map: with
`--enable-expert-parallel` it indexes past its weights and the worker segfaults on the first
request (recorded in tests/data/vllm/server_moe_ep2_segfault.log; TP-only MoE works).
`install_ep_fix` maps the ids to local slots before the kernel and zeroes the weights of
experts another rank holds, so each rank adds exactly its experts' share and the usual EP
all-reduce completes the sum.

FP8: INC cannot patch the fused experts on CPU (they are one 3-D op, not `MoeMatmul`s), so the
plugin does what INC's MoE op does on Gaudi, in QDQ form: expert weights rounded through FP8
e4m3 per expert and output channel (before vLLM repacks them), and the experts' input rounded
with the per-tensor scale of the measured `...experts.moe_op` input range.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

from harness.devices import DEVICES

logger = logging.getLogger("vllm.harness_inc")


def install_ep_fix() -> bool:
    """Patch CPUUnquantizedExperts.apply to honour the expert map; False if not the CPU build."""
    try:
        from vllm.model_executor.layers.fused_moe.experts.cpu_moe import CPUUnquantizedExperts
    except ImportError:
        return False
    original = CPUUnquantizedExperts.apply
    if getattr(original, "_harness_ep_fix", False):
        return True

    def apply(self: Any, *args: Any, **kwargs: Any) -> Any:
        expert_map = kwargs.get("expert_map")
        if expert_map is not None and "topk_ids" in kwargs:
            ids, weights = local_routing(
                kwargs["topk_ids"], kwargs["topk_weights"], expert_map
            )
            kwargs = {**kwargs, "topk_ids": ids, "topk_weights": weights}
        return original(self, *args, **kwargs)

    vars(apply)["_harness_ep_fix"] = True  # marks the patch, so it is applied once
    CPUUnquantizedExperts.apply = apply
    return True


def local_routing(topk_ids: Any, topk_weights: Any, expert_map: Any) -> tuple[Any, Any]:
    """Global ids -> this rank's local slots; experts of other ranks get slot 0, weight 0."""
    local = expert_map[topk_ids.long()]
    remote = local < 0
    ids = local.clamp_min(0).to(topk_ids.dtype)
    weights = topk_weights.masked_fill(remote, 0)
    return ids, weights


def qdq_rows(weight: Any) -> None:
    """Round a [experts, rows, cols] weight through FP8 e4m3 in place, one scale per row."""
    import torch

    fp8 = torch.float8_e4m3fn
    with torch.no_grad():
        w = weight.data.float()
        scale = w.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12) / torch.finfo(fp8).max
        weight.data.copy_(((w / scale).to(fp8).float() * scale).to(weight.dtype))


def fp8_moe_method(base: type) -> type:
    """An UnquantizedFusedMoEMethod that rounds expert weights through FP8 before vLLM
    prepacks them (INC quantize mode only)."""

    class INCQDQFusedMoEMethod(base):  # type: ignore[misc]
        def process_weights_after_loading(self, layer: Any) -> None:
            for name in ("w13_weight", "w2_weight"):
                weight = getattr(layer, name, None)
                if weight is not None and weight.dim() == 3:
                    qdq_rows(weight)
            super().process_weights_after_loading(layer)

    return INCQDQFusedMoEMethod


def pow2_scale(
    maxabs: float, full_scale: float = DEVICES["cpu"].fp8_full_scale, backoff: float = 0.25
) -> float:
    """INC's power-of-two activation scale: 2^ceil(log2(maxabs / (fullscale * backoff)))."""
    return 2.0 ** math.ceil(math.log2(max(maxabs, 1e-12) / (full_scale * backoff)))


def moe_node(module_name: str, ranges: dict[str, Any]) -> dict[str, Any] | None:
    """The measured MoE op of the layer `module_name` belongs to (the calibration names the
    block `mlp`, vLLM's Mixtral `block_sparse_moe`): `model.layers.<i>...experts.moe_op`."""
    match = re.search(r"layers\.(\d+)\.", module_name)
    if match is None:
        return None
    layer = f"layers.{match.group(1)}."
    for key in sorted(k for k in ranges if layer in k and k.endswith("experts.moe_op")):
        if ranges[key].get("inputs"):
            found: dict[str, Any] = ranges[key]
            return found
    return None


def qdq(x: Any, scale: float, dtype: Any) -> Any:
    """x rounded through FP8 `dtype` with `scale`, saturating at the type's range (as INC)."""
    import torch

    top = float(torch.finfo(dtype).max)
    return ((x.float() / scale).clamp(-top, top).to(dtype).float() * scale).to(x.dtype)


def input_qdq_hooks(model: Any, ranges: dict[str, Any]) -> tuple[int, int]:
    """Round each experts op's input through FP8 with its measured scale.

    The hook sits on the experts op (the parent of RoutedExperts, called with
    `(hidden_states, router_logits)`), so the router keeps its BF16 input as on Gaudi.
    Returns (blocks hooked, blocks without a measured range)."""
    import torch
    from vllm.model_executor.layers.fused_moe import RoutedExperts

    fp8 = torch.float8_e4m3fn
    parents = {id(c): (name, m) for name, m in model.named_modules() for c in m.children()}
    hooked = missing = 0
    for module in model.modules():
        if not isinstance(module, RoutedExperts):
            continue
        name, op = parents.get(id(module), ("", None))
        node = moe_node(name, ranges)
        if op is None or node is None:
            missing += 1
            logger.warning("INC: no measured input range for the MoE op %s", name)
            continue
        scale = pow2_scale(float(node["inputs"][0][0][0]), float(torch.finfo(fp8).max))
        op.register_forward_pre_hook(_hook(scale, fp8), with_kwargs=True)
        hooked += 1
    return hooked, missing


def _hook(scale: float, dtype: Any) -> Any:
    def hook(
        module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if args:
            return (qdq(args[0], scale, dtype), *args[1:]), kwargs
        if "hidden_states" in kwargs:
            kwargs = {**kwargs, "hidden_states": qdq(kwargs["hidden_states"], scale, dtype)}
        return args, kwargs

    return hook
