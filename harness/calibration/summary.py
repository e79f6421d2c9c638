"""Figures of a measurement set for the stage's metrics: nodes measured, experts covered."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_EXPERT = re.compile(r"^(?P<op>.*\.moe_op)\.w13_list\.(?P<i>\d+)$")


@dataclass(frozen=True)
class SetSummary:
    """What a rank set holds."""

    world: int
    nodes_measured: int  # distinct nodes over all ranks
    moe_layers: int
    experts_total: int  # the model's experts
    experts_covered: int  # min over MoE layers of distinct global experts present
    experts_routed: int  # min over MoE layers of experts with a non-zero intermediate amax
    experts_extra: int  # max over MoE layers of expert slots beyond the model's experts

    def as_metrics(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _scalar(value: Any) -> float:
    while isinstance(value, list):
        value = max((_scalar(v) for v in value), default=0.0)
    return float(value)


def global_expert(rank: int, local: int, local_count: int, experts_total: int) -> int:
    """Global index of local expert `local` on `rank` (EP: rank*E_local + i; TP MoE: i)."""
    if local_count >= experts_total:
        return local
    return rank * local_count + local


def summarize(files: list[Path], experts_total: int) -> SetSummary:
    """Read a set's range files (rank order) and count nodes and experts."""
    nodes: set[str] = set()
    seen: dict[str, set[int]] = {}  # op -> global experts present
    routed: dict[str, set[int]] = {}
    for rank, path in enumerate(files):
        data = json.loads(path.read_text(encoding="utf-8"))["Nodes"]
        nodes.update(data)
        locals_by_op: dict[str, list[int]] = {}
        for name in data:
            m = _EXPERT.match(name)
            if m:
                locals_by_op.setdefault(m["op"], []).append(int(m["i"]))
        for op, idx in locals_by_op.items():
            count = max(idx) + 1
            amax = (data.get(op, {}).get("outputs") or [])[1:]
            for i in idx:
                g = global_expert(rank, i, count, experts_total)
                seen.setdefault(op, set()).add(g)
                if i < len(amax) and _scalar(amax[i]) > 0:
                    routed.setdefault(op, set()).add(g)
    return SetSummary(
        world=len(files),
        nodes_measured=len(nodes),
        moe_layers=len(seen),
        experts_total=experts_total,
        experts_covered=min((sum(g < experts_total for g in v) for v in seen.values()),
                            default=0),
        experts_routed=min((len(routed.get(op, ())) for op in seen), default=0),
        experts_extra=max((sum(g >= experts_total for g in v) for v in seen.values()), default=0),
    )
