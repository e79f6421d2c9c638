"""Small INC-like measurement sets, written the way INC writes them (json.dump indent 4, np.savez)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

PREFIX = "inc_output_hooks_maxabs"


def npz_doc(doc: dict[str, Any]) -> dict[str, Any]:
    """The NPZ form INC writes: the same dict with float32 arrays."""
    nodes = {}
    for name, node in doc["Nodes"].items():
        out: dict[str, Any] = {}
        for key, v in node.items():
            if key in ("inputs", "outputs") and isinstance(v, list):
                out[key] = [np.array(e, dtype=np.float32) for e in v]
            elif isinstance(v, dict):
                out[key] = {k: np.array(e, dtype=np.float32) for k, e in v.items()}
            else:
                out[key] = v
        nodes[name] = out
    return {**{k: v for k, v in doc.items() if k != "Nodes"}, "Nodes": nodes}


def write_rank(
    directory: Path,
    rank: int,
    world: int,
    nodes: dict[str, Any],
    *,
    prefix: str = PREFIX,
    method: str | None = None,
    local_rank: int | None = None,
    mod_list: list[str] | None = None,
    npz: bool = True,
) -> Path:
    """Write one rank as INC does; returns the JSON path."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"{prefix}_{method}" if method else prefix
    doc = {
        "GlobalRank": None,
        "LocalRank": rank if local_rank is None else local_rank,
        "Mode": "Scale" if method else "DynamicRange",
        "Nodes": nodes,
    }
    path = directory / f"{stem}_{rank}_{world}.json"
    with open(path, "w") as f:
        json.dump(doc, f, indent=4)
    if npz:
        np.savez(directory / f"{stem}_{rank}_{world}.npz", npz_doc(doc))
    if mod_list is not None and not method:
        with open(directory / f"{prefix}_{rank}_{world}_mod_list.json", "w") as f:
            json.dump(mod_list, f, indent=4)
    return path


def v(rank: int, i: int) -> float:
    """A distinct, exactly representable value."""
    return 0.125 * ((rank * 37 + i * 11) % 97) + 0.25


def dense_nodes(rank: int, layers: int = 2, channels: int = 3) -> dict[str, Any]:
    """Attention + MLP nodes of a dense model (per-tensor and per-channel entries)."""
    nodes: dict[str, Any] = {}
    i = 0
    for layer in range(layers):
        p = f"model.layers.{layer}"
        nodes[f"{p}.self_attn.qkv_proj"] = {
            "inputs": [[[v(rank, i)]]],
            "params": {"weight": [[v(rank, i + 1)]]},
        }
        nodes[f"{p}.self_attn.attn.impl.matmul_qk"] = {
            "inputs": [[[v(rank, i + 2)]], [[v(rank, i + 3)]]]
        }
        nodes[f"{p}.self_attn.attn.impl.matmul_av"] = {
            "inputs": [[[v(rank, i + 4)]], [[v(rank, i + 5)]]]
        }
        nodes[f"{p}.self_attn.attn.impl.k_cache"] = {"inputs": [[[v(rank, i + 6)]]]}
        nodes[f"{p}.self_attn.attn.impl.v_cache"] = {"inputs": [[[v(rank, i + 7)]]]}
        nodes[f"{p}.mlp.down_proj"] = {
            "inputs": [[[v(rank, i + 8)]]],
            "outputs": [[[v(rank, i + 9)]]],
            "params": {"weight": [[v(rank, i + 10 + c)] for c in range(channels)]},
        }
        i += 10 + channels
    return nodes


def ep_nodes(
    rank: int, layers: tuple[int, ...] = (1, 2), experts: int = 2, offset: int = 0
) -> dict[str, Any]:
    """A MoE model on one expert-parallel rank: attention, a MoE op and its rank-local experts.

    ``offset`` shifts the values of the rank-specific parts (experts, per-expert amax).
    """
    nodes: dict[str, Any] = {}
    i = 0
    for layer in layers:
        p = f"model.layers.{layer}"
        nodes[f"{p}.self_attn.qkv_proj"] = {
            "inputs": [[[v(rank, i)]]],
            "params": {"weight": [[v(rank, i + 1)]]},
        }
        nodes[f"{p}.mlp.experts.moe_op"] = {
            "inputs": [[[v(rank, i + 2)]]],
            "outputs": [[[v(rank, i + 3)]]]
            + [[[v(rank + offset, i + 4 + e)]] for e in range(experts)],
        }
        for e in range(experts):
            for lst in ("w13_list", "w2_list"):
                nodes[f"{p}.mlp.experts.moe_op.{lst}.{e}"] = {
                    "inputs": [[[0.0]]],
                    "params": {
                        "weight": [[v(rank + offset, i + 40 + e + (7 if lst == "w2_list" else 0))]]
                    },
                }
        i += 4 + experts
    return nodes


def scale_nodes(nodes: dict[str, Any], scale: float = 0.0625) -> dict[str, Any]:
    """Scale-file nodes for range nodes: flat lists; MoE per-expert scales in inputs[1:].

    Values are Gaudi2 hardware-aligned (2^-4 and 1) unless ``scale`` says otherwise.
    """
    out: dict[str, Any] = {}
    for name, node in nodes.items():
        ins = [scale for _ in node["inputs"]]
        if name.endswith("moe_op"):
            ins = [scale] + [scale if k % 2 else 1.0 for k in range(len(node["outputs"]) - 1)]
        n: dict[str, Any] = {"inputs": ins, "outputs": [scale]}
        w = node.get("params", {}).get("weight")
        n["params"] = {"weight": [1.0 for _ in w] if w and len(w) > 1 else 1.0} if w else {}
        out[name] = n
    return out


def load_doc(path: Path) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def load_npz(path: Path) -> dict[str, Any]:
    """As INC loads it."""
    return np.load(path, allow_pickle=True)["arr_0"].item()
