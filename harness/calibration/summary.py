"""Figures of a measurement set for the stage's metrics: nodes measured, experts covered."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class SetSummary:
    """What a rank set holds."""

    world: int
    nodes_measured: int  # distinct nodes over all ranks
    moe_layers: int
    experts_total: int  # the model's experts
    experts_covered: int  # min over MoE layers of global experts with an intermediate amax slot
    experts_routed: int  # min over MoE layers of experts with a non-zero intermediate amax
    experts_extra: int  # max over MoE layers of expert slots beyond the model's experts

    def as_metrics(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _scalar(value: Any) -> float:
    while isinstance(value, list):
        value = max((_scalar(v) for v in value), default=0.0)
    return float(value)


def global_expert(rank: int, slot: int, slots: int, experts_total: int) -> int:
    """Global expert of a MoE op's per-expert slot: rank*slots + slot, or the slot itself when
    every rank carries all experts (one rank, or TP MoE)."""
    if slots >= experts_total:
        return slot
    return rank * slots + slot


def summarize(files: list[Path], experts_total: int) -> SetSummary:
    """Read a set's range files (rank order) and count nodes and experts.

    Experts are counted from the MoE ops' per-expert intermediate amax (outputs[1:]): that is
    what a layout must cover (expert weight nodes may be named locally, or, after step 6,
    globally on every rank).
    """
    nodes: set[str] = set()
    seen: dict[str, set[int]] = {}  # op -> global experts with a slot
    routed: dict[str, set[int]] = {}
    for rank, path in enumerate(files):
        data = json.loads(path.read_text(encoding="utf-8"))["Nodes"]
        nodes.update(data)
        for op in (n for n in data if n.endswith(".moe_op")):
            amax = (data[op].get("outputs") or [])[1:]
            for slot, value in enumerate(amax):
                g = global_expert(rank, slot, len(amax), experts_total)
                seen.setdefault(op, set()).add(g)
                if _scalar(value) > 0:
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
