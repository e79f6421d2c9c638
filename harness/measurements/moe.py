"""MoE node names, with the public tools' rules.

* An expert node is ``<op>.w13_list.<i>`` or ``<op>.w2_list.<i>`` with "moe" in the name
  (``model.layers.3.mlp.experts.moe_op.w13_list.7``); it holds the expert's weight max-abs.
* A MoE op is any other node with "moe" in its name (``...mlp.experts.moe_op``). In range files
  its ``outputs[0]`` is the op output and ``outputs[1:]`` the intermediate amax of each local
  expert; in scale files the per-expert scales are ``inputs[1:]``.
* The local expert count of a file is the highest expert index + 1 (over all layers).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from harness.measurements.naming import Kind

_EXPERT = re.compile(r"^(?P<prefix>.*\.(?:w13_list|w2_list))\.(?P<index>\d+)$")


def expert(name: str) -> tuple[str, int] | None:
    """``(prefix, index)`` of an expert node, None for other nodes."""
    if ".w13_list." not in name and ".w2_list." not in name:
        return None
    m = _EXPERT.match(name)
    if m is None or "moe" not in name.lower():
        return None
    return m["prefix"], int(m["index"])


def is_moe_op(name: str) -> bool:
    """Whether a node is a fused MoE op (carries per-expert values)."""
    return "moe" in name.lower() and ".w13_list" not in name and ".w2_list" not in name


def op_of_expert(prefix: str) -> str:
    """The MoE op an expert prefix belongs to (``...moe_op.w13_list`` -> ``...moe_op``)."""
    return prefix.rsplit(".", 1)[0]


def local_expert_count(names: Iterable[str]) -> int:
    """Highest expert index + 1 (0 when there are no experts), as the public tools compute it."""
    top = -1
    for n in names:
        e = expert(n)
        if e is not None and e[1] > top:
            top = e[1]
    return top + 1


def experts_per_op(names: Iterable[str]) -> dict[str, set[int]]:
    """Expert indices present for each MoE op (from the ``w13_list`` nodes, else ``w2_list``)."""
    found: dict[str, dict[str, set[int]]] = {}
    for n in names:
        e = expert(n)
        if e is None:
            continue
        prefix, index = e
        op = op_of_expert(prefix)
        found.setdefault(op, {}).setdefault(prefix.rsplit(".", 1)[1], set()).add(index)
    return {
        op: lists.get("w13_list") or lists.get("w2_list") or set() for op, lists in found.items()
    }


def per_expert_field(kind: Kind) -> str:
    """Where a MoE op keeps its per-expert values: ``outputs`` (ranges) or ``inputs`` (scales)."""
    return "outputs" if kind is Kind.RANGES else "inputs"
