"""A vLLM-style decoder built from HF weights, sharded the way vLLM shards it.

Imported only inside calibration rank workers (it imports torch at module level).

Why not measure the HF model: INC on CPU patches `nn.Linear` by class name, and transformers 5
stores MoE experts as fused 3-D parameters that INC never sees. vLLM (on Gaudi) instead has
fused column-parallel `qkv_proj` / `gate_up_proj`, row-parallel `o_proj` / `down_proj`, a
vocab-parallel `lm_head`, and per-expert `MoeMatmul` modules under
`<moe>.experts.moe_op.w13_list.<i>` / `w2_list.<i>`. This module rebuilds that structure, with
the module names vLLM uses, so the measurement files have the node names, the per-rank shapes
and the MoE op outputs (output 0 plus one intermediate amax per local expert) of a real Gaudi
calibration.

Sharding: dense layers column/row parallel over `tp` ranks; experts split over `ep` ranks
(`ep == tp`, vLLM's expert parallelism with DP=1), or, with `ep == 1`, each expert's
intermediate dimension split over the `tp` ranks (vLLM's TP MoE). Row-parallel outputs and
partial expert sums are all-reduced over the one process group (gloo).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# The sparse-MoE block is named `mlp` for every architecture (as vLLM names it for Qwen3-MoE and
# DeepSeek). vLLM's Mixtral calls it `block_sparse_moe`, but the public step-5/6 tools treat any
# node with "moe" in its name as a MoE op, so `block_sparse_moe.gate` (the router) would break
# unify/expand. Map `mlp` -> `block_sparse_moe` when applying these scales to vLLM's Mixtral.
MOE_BLOCK_NAME = "mlp"


@dataclass(frozen=True)
class Shard:
    """Where this process sits: its rank, the world, and how TP/EP split the model."""

    rank: int = 0
    world: int = 1
    tp: int = 1
    ep: int = 1

    def __post_init__(self) -> None:
        if self.tp != self.world or self.ep not in (1, self.tp):
            raise ValueError(
                f"unsupported layout tp={self.tp} ep={self.ep} world={self.world}: the CPU model "
                "runs TP over all ranks with EP either 1 or equal to TP"
            )


def _all_reduce(x: torch.Tensor, shard: Shard) -> torch.Tensor:
    if shard.world > 1:
        torch.distributed.all_reduce(x)
    return x


def _split(n: int, parts: int, what: str) -> int:
    if n % parts:
        raise ValueError(f"{what}={n} does not divide by {parts} ranks")
    return n // parts


class RMSNorm(nn.Module):
    def __init__(self, weight: torch.Tensor, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def _linear(weight: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=weight.dtype)
    layer.weight = nn.Parameter(weight.contiguous(), requires_grad=False)
    return layer


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class Attention(nn.Module):
    """QKVParallelLinear -> RoPE -> causal SDPA (GQA) -> RowParallelLinear + all-reduce."""

    def __init__(self, w: dict[str, torch.Tensor], p: str, cfg: Any, shard: Shard) -> None:
        super().__init__()
        self.shard = shard
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.heads = _split(cfg.num_attention_heads, shard.tp, "num_attention_heads")
        self.kv_heads = _split(cfg.num_key_value_heads, shard.tp, "num_key_value_heads")
        r, hd = shard.rank, self.head_dim
        q = w[f"{p}.q_proj.weight"].view(-1, hd, cfg.hidden_size)
        k = w[f"{p}.k_proj.weight"].view(-1, hd, cfg.hidden_size)
        v = w[f"{p}.v_proj.weight"].view(-1, hd, cfg.hidden_size)
        q = q[r * self.heads:(r + 1) * self.heads].reshape(-1, cfg.hidden_size)
        k = k[r * self.kv_heads:(r + 1) * self.kv_heads].reshape(-1, cfg.hidden_size)
        v = v[r * self.kv_heads:(r + 1) * self.kv_heads].reshape(-1, cfg.hidden_size)
        self.qkv_proj = _linear(torch.cat([q, k, v]))
        o = w[f"{p}.o_proj.weight"]
        self.o_proj = _linear(o[:, r * self.heads * hd:(r + 1) * self.heads * hd])
        self.q_norm = self.k_norm = None
        if f"{p}.q_norm.weight" in w:  # Qwen3: per-head RMSNorm of q and k before RoPE
            self.q_norm = RMSNorm(w[f"{p}.q_norm.weight"], cfg.rms_norm_eps)
            self.k_norm = RMSNorm(w[f"{p}.k_norm.weight"], cfg.rms_norm_eps)
        rope = getattr(cfg, "rope_parameters", None) or {}
        theta = float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0)))
        inv = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        self.register_buffer("inv_freq", inv, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        hd = self.head_dim
        qkv = self.qkv_proj(x)
        q, k, v = qkv.split([self.heads * hd, self.kv_heads * hd, self.kv_heads * hd], dim=-1)
        q = q.view(b, n, self.heads, hd)
        k = k.view(b, n, self.kv_heads, hd)
        v = v.view(b, n, self.kv_heads, hd)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        pos = torch.arange(n, dtype=torch.float32)
        freqs = torch.outer(pos, self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        out = out.transpose(1, 2).reshape(b, n, self.heads * hd)
        return _all_reduce(self.o_proj(out), self.shard)


class DenseMLP(nn.Module):
    """MergedColumnParallelLinear gate_up_proj -> SiLU*up -> RowParallelLinear down_proj."""

    def __init__(self, w: dict[str, torch.Tensor], p: str, cfg: Any, shard: Shard) -> None:
        super().__init__()
        self.shard = shard
        size = _split(cfg.intermediate_size, shard.tp, "intermediate_size")
        sl = slice(shard.rank * size, (shard.rank + 1) * size)
        gate, up = w[f"{p}.gate_proj.weight"][sl], w[f"{p}.up_proj.weight"][sl]
        self.gate_up_proj = _linear(torch.cat([gate, up]))
        self.down_proj = _linear(w[f"{p}.down_proj.weight"][:, sl])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return _all_reduce(self.down_proj(F.silu(gate) * up), self.shard)


class MoeMatmul(nn.Module):
    """One expert's weight, as vllm-gaudi wraps it; INC measures it as a linear (weight only)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.contiguous(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class VllmMixtureOfExpertsOp(nn.Module):
    """The fused MoE op of vllm-gaudi: local experts' w13/w2 lists; partial output per rank.

    `num_experts` is the number of *local* experts: INC sizes the op's outputs as
    1 + num_experts (output 0, then the intermediate amax of each local expert).
    """

    def __init__(self, w13: list[torch.Tensor], w2: list[torch.Tensor], first: int) -> None:
        super().__init__()
        self.w13_list = nn.ModuleList(MoeMatmul(t) for t in w13)
        self.w2_list = nn.ModuleList(MoeMatmul(t) for t in w2)
        self.num_experts = len(w13)
        self.experts_min = first
        self.experts_max = first + len(w13) - 1

    def expert_inputs(
        self, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(token indices, routing weights) of the tokens each local expert receives."""
        out = []
        for i in range(self.num_experts):
            hit = topk_ids == self.experts_min + i
            tokens = hit.any(dim=-1).nonzero(as_tuple=True)[0]
            weights = (topk_weights * hit).sum(dim=-1)[tokens]
            out.append((tokens, weights))
        return out

    def run(
        self, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Output (partial, local experts only) and each local expert's intermediate amax."""
        out = torch.zeros(x.shape, dtype=torch.float32)  # bf16 index_add_ is slow on CPU
        amax = []
        for i, (tokens, weights) in enumerate(self.expert_inputs(x, topk_ids, topk_weights)):
            if tokens.numel() == 0:
                amax.append(torch.zeros((), dtype=x.dtype))
                continue
            # the weights, not the expert modules: as on Gaudi, the fused op consumes the
            # activations and the expert nodes record only their weight (input 0.0)
            gate, up = F.linear(x[tokens], self.w13_list[i].weight).chunk(2, dim=-1)
            mid = F.silu(gate) * up
            amax.append(mid.abs().max())
            y = F.linear(mid, self.w2_list[i].weight) * weights[:, None].to(x.dtype)
            out.index_add_(0, tokens, y.float())
        return out.to(x.dtype), amax

    def forward(
        self, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor
    ) -> torch.Tensor:
        return self.run(x, topk_ids, topk_weights)[0]


class FusedMoE(nn.Module):
    """vLLM's FusedMoE layer: routes (softmax top-k, renormalised) and calls `moe_op`."""

    def __init__(self, op: VllmMixtureOfExpertsOp, top_k: int, renormalize: bool) -> None:
        super().__init__()
        self.moe_op = op
        self.top_k = top_k
        self.renormalize = renormalize

    def forward(self, x: torch.Tensor, router_logits: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(router_logits.float(), dim=-1)
        weights, ids = torch.topk(probs, self.top_k, dim=-1)
        if self.renormalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return self.moe_op(x, ids, weights.to(x.dtype))


class SparseMoeBlock(nn.Module):
    """Router `gate` (replicated linear) + `experts`; partial sums all-reduced over the ranks."""

    def __init__(self, w: dict[str, torch.Tensor], p: str, cfg: Any, shard: Shard) -> None:
        super().__init__()
        self.shard = shard
        n = getattr(cfg, "num_local_experts", None) or cfg.num_experts
        self.gate = _linear(w[f"{p}.gate.weight"])
        gate_up, down = w[f"{p}.experts.gate_up_proj"], w[f"{p}.experts.down_proj"]
        if shard.ep > 1:
            local = _split(n, shard.ep, "num_experts")
            first = shard.rank * local
            w13 = [gate_up[e] for e in range(first, first + local)]
            w2 = [down[e] for e in range(first, first + local)]
        else:  # TP MoE: every rank holds every expert, intermediate dim split
            first = 0
            size = _split(gate_up.shape[1] // 2, shard.tp, "moe intermediate_size")
            sl = slice(shard.rank * size, (shard.rank + 1) * size)
            w13 = [torch.cat([g[: g.shape[0] // 2][sl], g[g.shape[0] // 2:][sl]]) for g in gate_up]
            w2 = [d[:, sl] for d in down]
        renorm = bool(getattr(cfg, "norm_topk_prob", True))
        self.experts = FusedMoE(VllmMixtureOfExpertsOp(w13, w2, first), cfg.num_experts_per_tok,
                                renorm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        out = self.experts(flat, self.gate(flat))
        return _all_reduce(out, self.shard).reshape(shape)


class DecoderLayer(nn.Module):
    def __init__(self, w: dict[str, torch.Tensor], i: int, cfg: Any, shard: Shard) -> None:
        super().__init__()
        p = f"model.layers.{i}"
        self.input_layernorm = RMSNorm(w[f"{p}.input_layernorm.weight"], cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(
            w[f"{p}.post_attention_layernorm.weight"], cfg.rms_norm_eps
        )
        self.self_attn = Attention(w, f"{p}.self_attn", cfg, shard)
        self.mlp: nn.Module
        if f"{p}.mlp.experts.gate_up_proj" in w:
            self.mlp = SparseMoeBlock(w, f"{p}.mlp", cfg, shard)
        else:
            self.mlp = DenseMLP(w, f"{p}.mlp", cfg, shard)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


class DecoderModel(nn.Module):
    def __init__(self, w: dict[str, torch.Tensor], cfg: Any, shard: Shard) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding.from_pretrained(w["model.embed_tokens.weight"],
                                                         freeze=True)
        self.layers = nn.ModuleList(
            DecoderLayer(w, i, cfg, shard) for i in range(cfg.num_hidden_layers)
        )
        self.norm = RMSNorm(w["model.norm.weight"], cfg.rms_norm_eps)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(ids)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)


class CausalLM(nn.Module):
    """`model` + vocab-parallel `lm_head` (rows zero-padded to equal shards, then gathered)."""

    def __init__(self, w: dict[str, torch.Tensor], cfg: Any, shard: Shard) -> None:
        super().__init__()
        self.shard = shard
        self.model = DecoderModel(w, cfg, shard)
        head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
        self.vocab = head.shape[0]
        rows = -(-self.vocab // shard.tp)
        padded = torch.zeros(rows * shard.tp, head.shape[1], dtype=head.dtype)
        padded[: self.vocab] = head
        self.lm_head = _linear(padded[shard.rank * rows:(shard.rank + 1) * rows])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(self.model(ids))
        if self.shard.world > 1:
            parts = [torch.empty_like(logits) for _ in range(self.shard.world)]
            torch.distributed.all_gather(parts, logits)
            logits = torch.cat(parts, dim=-1)
        return logits[..., : self.vocab]


def build(weights: dict[str, Any], cfg: Any, shard: Shard) -> CausalLM:
    """This rank's shard of the vLLM-style model, in eval mode."""
    with torch.no_grad():
        model = CausalLM(weights, cfg, shard)
    model.eval()
    return model
