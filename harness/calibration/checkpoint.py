"""Read an HF checkpoint directory without transformers (rank workers start faster without it).

Importing transformers costs 8-15 s per process on a busy 2-core box; a rank worker only needs
the tensors and a few config fields. Expert weights are normalised to transformers 5's in-memory
layout (`mlp.experts.gate_up_proj` [E, 2I, H], `mlp.experts.down_proj` [E, H, I],
`mlp.gate.weight`), whatever the file holds: Mixtral's `block_sparse_moe.experts.<e>.w1/w3/w2`,
Qwen3-MoE's `mlp.experts.<e>.gate_proj/up_proj/down_proj`, or already fused tensors.

Imported only inside calibration rank workers (imports torch).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

SUPPORTED = ("LlamaForCausalLM", "MixtralForCausalLM", "Qwen3MoeForCausalLM")
_EXPERT = re.compile(
    r"^(model\.layers\.\d+)\.(?:block_sparse_moe|mlp)\.experts\.(\d+)\.(w1|w2|w3|gate_proj|up_proj|down_proj)\.weight$"
)
_ROLE = {"w1": "gate", "gate_proj": "gate", "w3": "up", "up_proj": "up", "w2": "down",
         "down_proj": "down"}


def load_config(model_dir: Path) -> SimpleNamespace:
    """config.json as attributes; errors name the file and the supported architectures."""
    path = Path(model_dir) / "config.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the model config ({exc})") from None
    archs = raw.get("architectures") or []
    if not any(a in SUPPORTED for a in archs):
        raise ValueError(
            f"{path}: architectures {archs} are not supported by the CPU calibration model "
            f"(supported: {', '.join(SUPPORTED)})"
        )
    raw.setdefault("head_dim", raw["hidden_size"] // raw["num_attention_heads"])
    raw.setdefault("num_key_value_heads", raw["num_attention_heads"])
    return SimpleNamespace(**raw)


def _tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{model_dir}: no *.safetensors weights found")
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update(load_file(str(f)))
    return out


def load_weights(model_dir: Path, dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """All tensors in `dtype`, experts fused per layer, the router under `mlp.gate`."""
    raw = _tensors(Path(model_dir))
    weights: dict[str, torch.Tensor] = {}
    experts: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    for name, t in raw.items():
        t = t.to(dtype)
        m = _EXPERT.match(name)
        if m:
            experts.setdefault(m.group(1), {}).setdefault(int(m.group(2)), {})[
                _ROLE[m.group(3)]
            ] = t
            continue
        name = name.replace(".block_sparse_moe.", ".mlp.")
        weights[name] = t
    for layer, by_index in experts.items():
        idx = sorted(by_index)
        weights[f"{layer}.mlp.experts.gate_up_proj"] = torch.stack(
            [torch.cat([by_index[i]["gate"], by_index[i]["up"]]) for i in idx]
        )
        weights[f"{layer}.mlp.experts.down_proj"] = torch.stack([by_index[i]["down"] for i in idx])
    return weights


def load(
    model_dir: str | Path, dtype: torch.dtype = torch.bfloat16
) -> tuple[dict[str, Any], Any]:
    """(weights, config) of an HF model directory."""
    model_dir = Path(model_dir)
    return load_weights(model_dir, dtype), load_config(model_dir)
