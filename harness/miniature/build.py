"""Architectures of the miniature models and their deterministic construction.

Two models, both small enough to commit in bf16 safetensors:

* ``tiny-llama``: LlamaForCausalLM, hidden 256, 4 layers, 4 heads (2 KV
  heads, GQA as in Llama 3), FFN 512, tied embeddings.
* ``tiny-moe``: MixtralForCausalLM, hidden 256, 4 layers, 4 heads (2 KV
  heads), 8 experts of FFN 128, top-2 routing, tied embeddings.

Heads and KV heads divide by 2 (TP=2); 8 experts divide by EP=2, 4 and 8.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TINY_LLAMA = "tiny-llama"
TINY_MOE = "tiny-moe"


@dataclass(frozen=True)
class ModelFacts:
    """What the stages need to know about a miniature model without loading it."""

    name: str
    architecture: str
    model_type: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    num_experts: int = 0
    experts_per_token: int = 0
    max_position_embeddings: int = 2048

    @property
    def is_moe(self) -> bool:
        """True for a mixture-of-experts model."""
        return self.num_experts > 0

    def supports_tp(self, tp: int) -> bool:
        """True when ``tp`` divides heads and KV heads (no KV-head replication)."""
        return tp >= 1 and self.num_heads % tp == 0 and self.num_kv_heads % tp == 0

    def supports_ep(self, ep: int) -> bool:
        """True when ``ep`` ranks can each hold the same number of experts."""
        return self.is_moe and ep >= 1 and self.num_experts % ep == 0


MODELS: dict[str, ModelFacts] = {
    TINY_LLAMA: ModelFacts(
        name=TINY_LLAMA,
        architecture="LlamaForCausalLM",
        model_type="llama",
        hidden_size=256,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        head_dim=64,
        intermediate_size=512,
    ),
    TINY_MOE: ModelFacts(
        name=TINY_MOE,
        architecture="MixtralForCausalLM",
        model_type="mixtral",
        hidden_size=256,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        head_dim=64,
        intermediate_size=128,
        num_experts=8,
        experts_per_token=2,
    ),
}


def hf_config(name: str, vocab_size: int, eos_token_id: int, pad_token_id: int) -> Any:
    """Return the transformers config of model ``name`` for a given tokenizer."""
    from transformers import LlamaConfig
    from transformers import MixtralConfig

    f = MODELS[name]
    common: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=f.hidden_size,
        intermediate_size=f.intermediate_size,
        num_hidden_layers=f.num_layers,
        num_attention_heads=f.num_heads,
        num_key_value_heads=f.num_kv_heads,
        head_dim=f.head_dim,
        max_position_embeddings=f.max_position_embeddings,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        initializer_range=0.02,
    )
    if f.architecture == "LlamaForCausalLM":
        return LlamaConfig(**common, attention_bias=False, mlp_bias=False)
    return MixtralConfig(
        **common,
        num_local_experts=f.num_experts,
        num_experts_per_tok=f.experts_per_token,
        router_aux_loss_coef=0.02,
        output_router_logits=False,
        sliding_window=None,
    )


def build_model(
    name: str, vocab_size: int, eos_token_id: int, pad_token_id: int, seed: int = 0
) -> Any:
    """Build model ``name`` with freshly initialised fp32 weights, deterministic from ``seed``."""
    import torch
    from transformers import AutoModelForCausalLM

    if name not in MODELS:
        raise KeyError(f"Unknown miniature model {name!r}. Available: {', '.join(MODELS)}")
    cfg = hf_config(name, vocab_size, eos_token_id, pad_token_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    cfg.architectures = [MODELS[name].architecture]
    return model


def init_from(model: Any, source: Any) -> str:
    """Copy a trained model's weights into ``model``; returns how ("copy" or "upcycle").

    Same architecture: a plain copy (to continue training). Dense Llama into the
    Mixtral miniature: sparse upcycling. Embeddings, norms and attention are
    copied; the dense FFN's intermediate rows are cut into ``I_dense / I_expert``
    slices and expert ``e`` starts from slice ``e % n_slices`` (down projection
    scaled by the slice count over top-k, so top-k experts sum to the dense
    FFN's scale); the router keeps its fresh random init.

    Raises:
        ValueError: shapes or architectures that cannot be mapped.
    """
    import torch

    src = dict(source.state_dict())
    dst = model.state_dict()
    if type(model) is type(source):
        model.load_state_dict({k: v.float() for k, v in src.items()}, strict=True)
        return "copy"
    cfg = model.config
    n_exp, i_exp = cfg.num_local_experts, cfg.intermediate_size
    i_dense = source.config.intermediate_size
    if i_dense % i_exp:
        raise ValueError(f"dense FFN {i_dense} does not split into experts of {i_exp}")
    n_slices = i_dense // i_exp
    scale = n_slices / cfg.num_experts_per_tok
    new: dict[str, Any] = {}
    for key, value in dst.items():
        if key in src and src[key].shape == value.shape:
            new[key] = src[key].float()
        elif key.endswith("mlp.experts.gate_up_proj"):
            p = key.removesuffix("experts.gate_up_proj")
            gate, up = src[p + "gate_proj.weight"].float(), src[p + "up_proj.weight"].float()
            parts = []
            for e in range(n_exp):
                s = slice((e % n_slices) * i_exp, (e % n_slices + 1) * i_exp)
                parts.append(torch.cat([gate[s], up[s]], dim=0))
            new[key] = torch.stack(parts)
        elif key.endswith("mlp.experts.down_proj"):
            p = key.removesuffix("experts.down_proj")
            down = src[p + "down_proj.weight"].float()
            new[key] = torch.stack(
                [
                    scale * down[:, (e % n_slices) * i_exp : (e % n_slices + 1) * i_exp]
                    for e in range(n_exp)
                ]
            )
        elif key.endswith("mlp.gate.weight"):
            new[key] = value
        else:
            raise ValueError(f"cannot initialise {key} {tuple(value.shape)} from the dense model")
    model.load_state_dict(new, strict=True)
    return "upcycle"
