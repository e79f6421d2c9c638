"""What a range set says about its MoE experts: never routed, rank-local, expanded."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from harness.measurements import moe
from harness.measurements.layout import LIST
from harness.measurements.layout import field
from harness.measurements.layout import struct_items
from harness.measurements.model import FileGroup
from harness.measurements.model import MeasurementFile
from harness.measurements.report import CheckReport
from harness.measurements.report import Severity
from harness.measurements.report import listing


def check_experts(
    report: CheckReport,
    g: FileGroup,
    loaded: dict[int, MeasurementFile],
    target_world: int | None,
    summary: dict[str, Any],
) -> str:
    """Findings about the MoE experts of a range set; returns the set's status text."""
    first = loaded[min(loaded)]
    per_op = moe.experts_per_op(first.layout.names)
    ops: list[tuple[int, int]] = []  # (node index, per-expert count)
    for i, name in enumerate(first.layout.names):
        if moe.is_moe_op(name):
            out = field(first.layout.structs[i], "outputs")
            if out is not None and out[1] == LIST and len(out[2]) > 1:
                ops.append((i, len(out[2]) - 1))
    summary["moe_ops"] = len(ops)
    if not ops:
        return "no MoE ops"
    counts = sorted({c for _i, c in ops})
    n_experts = sorted({len(per_op.get(first.layout.names[i], ())) for i, _c in ops})
    expanded = bool(per_op) and any(len(per_op.get(first.layout.names[i], ())) > c for i, c in ops)
    summary["experts_per_rank"] = counts[-1]
    # experts never routed
    zero: dict[str, list[str]] = defaultdict(list)
    for rank, f in sorted(loaded.items()):
        index = f.layout.index()
        for i0, c in ops:
            name = first.layout.names[i0]
            node = index.get(name)
            if node is None:
                continue
            items = [it for it in struct_items(f.layout.structs[node]) if it[0] == "outputs"][1:]
            base = int(f.layout.offsets[node])
            for k, (_key, _idx, start, size, _shape) in enumerate(items):
                if not f.values[base + start : base + start + size].any():
                    if expanded:
                        zero[name].append(str(rank * c + k))
                    elif g.world > 1:
                        zero[name].append(f"rank {rank}: {k}")
                    else:
                        zero[name].append(str(k))
    for name, experts in zero.items():
        report.add(
            Severity.WARNING,
            "unrouted-expert",
            f"{name}: {len(experts)} experts have intermediate amax 0, never routed during "
            f"calibration (experts {listing(experts)}): the calibration data set is too small "
            "or too narrow; "
            "calibrate with more and more varied samples",
            first.path.parent,
        )
    if expanded:
        report.add(
            Severity.INFO,
            "expanded",
            f"expanded set: every rank holds all {n_experts[-1]} experts and its "
            f"{counts[-1]}-expert slice of the amax (serves at EP{g.world})",
            first.path.parent,
        )
        if target_world is not None and target_world != g.world:
            report.add(
                Severity.ERROR,
                "target-world",
                f"expanded for world {g.world}, the target is {target_world}: "
                f"expand the unified set with -w {target_world}",
                first.path.parent,
            )
        return f"{len(ops)} MoE ops, expanded ({counts[-1]} of {n_experts[-1]} experts per rank)"
    if g.world == 1:
        return f"{len(ops)} MoE ops, {counts[-1]} experts (single rank: expand -w N for EP)"
    same_experts = (
        len(
            {
                tuple(
                    sorted(
                        moe.experts_per_op(f.layout.names).get(first.layout.names[ops[0][0]], ())
                    )
                )
                for f in loaded.values()
            }
        )
        == 1
    )
    if same_experts:
        text = (
            f"each of the {g.world} ranks holds experts 0-{counts[-1] - 1} of every MoE layer "
            "and the set was never unified: from an expert-parallel calibration (DeepSeek always "
            f"is) these are rank-local experts and the set serves only at EP{g.world}; for another "
            "size run unify -r 1 -u, then expand -w N (unify without -u would max different "
            "experts together)"
        )
        if target_world is not None and target_world != g.world:
            report.add(Severity.ERROR, "expert-parallel", text, first.path.parent)
        else:
            report.add(Severity.WARNING, "expert-parallel", text, first.path.parent)
    return f"{len(ops)} MoE ops, {counts[-1]} experts per rank (expert-parallel layout)"
