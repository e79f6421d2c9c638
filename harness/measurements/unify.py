"""Unify the measurements of W ranks into R (the public step-5 tool, checked and fast).

Semantics (DESIGN.md "Measurement tools semantics"):

* ``ranks=R``: W % R == 0 and R < W; group g holds ranks ``[g*W/R, (g+1)*W/R)``.
  ``groups=[[0, 1], [2, 3]]`` (CLI ``-g "0,1--2,3"``): explicit groups; every rank exactly once.
* Group g is written as the first member's file name with ``_<first>_<W>`` replaced by
  ``_<g>_<R>``; its ``LocalRank`` is g, or -1 when R == 1; ``GlobalRank`` is null.
* Every number is the max over the group, per tensor and per channel (element-wise).
* ``expert_parallel`` (``-u``): expert nodes are gathered, not maxed: expert i of the k-th
  member becomes expert ``k*E_local + i`` (E_local = highest local expert index + 1); the MoE
  op's first value (``outputs[0]`` in range files, ``inputs[0]`` in scale files) is maxed and its
  per-expert values (``outputs[1:]``, ``inputs[1:]``) are concatenated in member order. New
  expert nodes follow the existing nodes in the order the public tool produces.
* Range and scale files are unified alike; ``skip_scales`` (``-s``) leaves scale files out.
  Module lists are unified too (the public tool writes none).

Difference from the public script: for scale files it takes Python's ``max()`` of whole lists
(outputs and weights), a lexicographic max. It equals the element-wise max when an entry holds
one value; for per-channel entries the element-wise max used here is the correct one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import MeasurementError
from harness.measurements import moe
from harness.measurements.atomic import staged_directory
from harness.measurements.layout import LIST
from harness.measurements.layout import Layout
from harness.measurements.layout import LayoutBuilder
from harness.measurements.layout import describe_struct
from harness.measurements.layout import field
from harness.measurements.layout import replace_field
from harness.measurements.layout import struct_items
from harness.measurements.model import MeasurementFile
from harness.measurements.model import Selection
from harness.measurements.model import read_mod_list
from harness.measurements.model import read_ranks
from harness.measurements.model import scan
from harness.measurements.model import select
from harness.measurements.naming import Kind
from harness.measurements.outcome import Outcome
from harness.measurements.outcome import Timings
from harness.measurements.writer import Encoders
from harness.measurements.writer import SetWriter


def parse_groups(text: str) -> list[list[int]]:
    """Parse the public tool's card groups: ``"0,1--2,3"`` -> ``[[0, 1], [2, 3]]``."""
    cleaned = text.replace(" ", "").strip("-").strip(",")
    groups: list[list[int]] = []
    for chunk in cleaned.split("--"):
        cards = [c for c in chunk.strip(",").split(",") if c]
        if not cards:
            raise ValueError(f"empty group in {text!r}")
        try:
            groups.append([int(c) for c in cards])
        except ValueError:
            raise ValueError(
                f"card groups must be numbers separated by ',' and '--', got {text!r}"
            ) from None
    return groups


def plan_groups(
    world: int,
    ranks: int | None,
    groups: Sequence[Sequence[int]] | str | None,
    where: Path,
) -> list[list[int]]:
    """The member ranks of each output rank; raises MeasurementError for impossible requests."""
    if (ranks is None) == (groups is None):
        raise MeasurementError(where, "give exactly one of ranks (-r) or card groups (-g)")
    if ranks is not None:
        if ranks < 1:
            raise MeasurementError(where, f"target ranks must be at least 1, got -r {ranks}")
        if ranks >= world:
            raise MeasurementError(
                where,
                f"-r {ranks} is not below the world size {world}: unify reduces the rank count",
            )
        if world % ranks:
            raise MeasurementError(
                where,
                f"-r {ranks} does not divide the world size {world}; use one of "
                + ", ".join(str(d) for d in range(1, world) if world % d == 0),
            )
        size = world // ranks
        return [list(range(g * size, (g + 1) * size)) for g in range(ranks)]
    if isinstance(groups, str):
        try:
            planned = parse_groups(groups)
        except ValueError as exc:
            raise MeasurementError(where, str(exc)) from None
    else:
        planned = [list(g) for g in groups or []]
    if not planned or any(not g for g in planned):
        raise MeasurementError(where, "card groups must not be empty")
    flat = [r for g in planned for r in g]
    bad = sorted({r for r in flat if not 0 <= r < world})
    if bad:
        raise MeasurementError(
            where, f"card group rank {bad[0]} is not in 0..{world - 1} (world size {world})"
        )
    dup = sorted({r for r in flat if flat.count(r) > 1})
    if dup:
        raise MeasurementError(where, f"rank {dup[0]} appears in more than one card group")
    missing = sorted(set(range(world)) - set(flat))
    if missing:
        raise MeasurementError(
            where, f"card groups leave out ranks {', '.join(map(str, missing))} of world {world}"
        )
    if len(planned) >= world:
        raise MeasurementError(
            where, f"{len(planned)} card groups for world size {world}: nothing to unify"
        )
    return planned


# ---------------------------------------------------------------------------------------------
# The computation


def align(f: MeasurementFile, base: MeasurementFile) -> np.ndarray:
    """``f``'s values in ``base``'s layout; raises when nodes or shapes differ."""
    if f.layout == base.layout:
        return f.values
    index = f.layout.index()
    base_names = set(base.layout.names)
    missing = [n for n in base.layout.names if n not in index]
    extra = [n for n in f.layout.names if n not in base_names]
    if missing or extra:
        counts = f"({len(missing)} missing, {len(extra)} extra)"
        if missing:
            what = f"rank {f.rank} lacks node {missing[0]!r} of rank {base.rank} {counts}"
        else:
            what = f"rank {f.rank} has node {extra[0]!r} that rank {base.rank} lacks {counts}"
        raise MeasurementError(f.path, what + ": the ranks of a set must hold the same nodes")
    pieces = []
    for name, struct in zip(base.layout.names, base.layout.structs, strict=True):
        i = index[name]
        if f.layout.structs[i] != struct:
            raise MeasurementError(
                f.path,
                f"node {name!r} differs from rank {base.rank}: "
                f"{describe_struct(f.layout.structs[i])} vs {describe_struct(struct)}",
            )
        pieces.append(np.arange(*f.layout.span(i)))
    return f.values[np.concatenate(pieces)] if pieces else f.values[:0]


def _unified_mod_list(
    members: list[MeasurementFile], lists: dict[int, list[str]], ep: bool, e_local: int
) -> list[str] | None:
    if not any(m.rank in lists for m in members):
        return None
    seen: dict[str, None] = {}
    experts: dict[str, tuple[str, int] | None] = {}
    for k, m in enumerate(members):
        names = lists.get(m.rank, [])
        if ep and k:
            for n in names:
                if n not in experts:
                    experts[n] = moe.expert(n)
            names = [
                n if (e := experts[n]) is None else f"{e[0]}.{k * e_local + e[1]}" for n in names
            ]
        seen.update(dict.fromkeys(names))
    return list(seen)


def _check_rank_local(base: MeasurementFile, kind: Kind) -> None:
    """-u needs rank-local experts: as many per-expert values in each MoE op as experts."""
    per_op = moe.experts_per_op(base.layout.names)
    key = moe.per_expert_field(kind)
    index = base.layout.index()
    for op, experts in per_op.items():
        i = index.get(op)
        if i is None:
            continue
        f = field(base.layout.structs[i], key)
        if f is None or f[1] != LIST:
            continue
        count = len(f[2]) - 1
        if count != len(experts):
            raise MeasurementError(
                base.path,
                f"{op} holds {count} per-expert values but {len(experts)} experts: each rank "
                "already holds all experts (an expanded set?); unify -u needs the rank-local "
                "experts of an expert-parallel calibration: unify the original calibration "
                "output instead",
            )


def unify_group(
    members: list[MeasurementFile], kind: Kind, expert_parallel: bool
) -> tuple[Layout, np.ndarray, int]:
    """Unify one group of ranks: (layout, values, local expert count used)."""
    base = members[0]
    aligned = [base.values] + [align(m, base) for m in members[1:]]
    maxed = np.maximum.reduce(aligned) if len(aligned) > 1 else base.values.copy()
    e_local = moe.local_expert_count(base.layout.names) if expert_parallel else 0
    if not expert_parallel or e_local == 0:
        return base.layout, maxed, e_local
    _check_rank_local(base, kind)
    lay = base.layout
    per_key = moe.per_expert_field(kind)
    out = LayoutBuilder()
    experts: list[tuple[int, str, int]] = []  # (node, prefix, index) of rank 0's experts, in order
    run_start = 0  # nodes [run_start, i) are copied from the maxed values in one piece

    for i, name in enumerate(lay.names):
        ex = moe.expert(name)
        if ex is None and not moe.is_moe_op(name):
            continue
        out.extend(lay, maxed, run_start, i)
        run_start = i + 1
        s, e = lay.span(i)
        struct = lay.structs[i]
        if ex is not None:
            out.add(name, struct, aligned[0][s:e])  # rank 0 keeps its experts
            experts.append((i, *ex))
            continue
        f = field(struct, per_key)
        if f is None or f[1] != LIST or len(f[2]) < 2:
            out.add(name, struct, maxed[s:e])
            continue
        items = [it for it in struct_items(struct) if it[0] == per_key]
        lo = s + items[1][2]
        hi = s + items[-1][2] + items[-1][3]
        values = np.concatenate([maxed[s:lo], *[a[lo:hi] for a in aligned], maxed[hi:e]])
        shapes = f[2]
        new_struct = replace_field(
            struct, (per_key, LIST, (shapes[0],) + shapes[1:] * len(members))
        )
        out.add(name, new_struct, values)
    out.extend(lay, maxed, run_start, len(lay))

    if experts:
        # the other members' experts follow, in the public tool's order: node, then member
        ks = range(1, len(members))
        new_names = [f"{prefix}.{k * e_local + idx}" for _i, prefix, idx in experts for k in ks]
        clash = set(new_names) & set(lay.names)
        if clash or len(set(new_names)) != len(new_names):
            raise MeasurementError(
                base.path,
                f"renumbered experts collide with existing nodes (e.g. {sorted(clash)[:1]}): "
                "the ranks do not hold rank-local experts 0..E_local-1",
            )
        out.names.extend(new_names)
        out.structs.extend([lay.structs[i] for i, _p, _x in experts for _k in ks])
        out.pieces.append(
            _gather_experts(lay, np.stack(aligned), [i for i, _p, _x in experts], len(members))
        )
    layout, values = out.build()
    return layout, values, e_local


def _gather_experts(lay: Layout, stacked: np.ndarray, nodes: list[int], members: int) -> np.ndarray:
    starts = lay.offsets[nodes]
    sizes = lay.offsets[np.asarray(nodes) + 1] - starts
    ks = np.arange(1, members)
    if sizes.size and (sizes == sizes[0]).all():
        m = int(sizes[0])
        cols = starts[:, None, None] + np.arange(m)[None, None, :]
        rows = np.broadcast_to(ks[None, :, None], (len(nodes), members - 1, m))
        picked: np.ndarray = stacked[rows, np.broadcast_to(cols, rows.shape)].ravel()
        return picked
    parts = [stacked[k, s : s + n] for s, n in zip(starts, sizes, strict=True) for k in ks]
    return np.concatenate(parts) if parts else stacked[0, :0]


# ---------------------------------------------------------------------------------------------
# The operation


def unify(
    src_dir: Path | str,
    out_dir: Path | str,
    ranks: int | None = None,
    groups: Sequence[Sequence[int]] | str | None = None,
    expert_parallel: bool = False,
    skip_scales: bool = False,
    *,
    world: int | None = None,
    prefix: str | None = None,
) -> Outcome:
    """Unify a measurement set to fewer ranks, writing the new set atomically into ``out_dir``.

    Args:
        src_dir: directory of the W-rank set (``-m``).
        out_dir: output directory (``-o``); may equal ``src_dir``: the new files join the old.
        ranks: target rank count R (``-r``), or
        groups: explicit card groups (``-g``), ``"0,1--2,3"`` or ``[[0, 1], [2, 3]]``.
        expert_parallel: apply expert-parallel rules (``-u``).
        skip_scales: leave scale files out (``-s``).
        world: source world size when the directory holds sets of several sizes.
        prefix: file prefix when the directory holds several.
    """
    src = Path(src_dir)
    timings = Timings()
    outcome = Outcome("unify", src, Path(out_dir), timings=timings)
    found = scan(src, prefix)
    base, _method, w, range_entries = select(found, Selection(Kind.RANGES, world, prefix))
    plan = plan_groups(w, ranks, groups, src)
    r_out = len(plan)
    jobs: list[tuple[Kind, str | None, dict[int, dict[str, Any]]]] = [
        (Kind.RANGES, None, range_entries)
    ]
    methods = sorted(
        {
            e.name.method or ""
            for e in found.data()
            if e.name.kind is Kind.SCALES and e.name.base == base and e.name.world == w
        }
    )
    if skip_scales:
        if methods:
            outcome.notes.append("scale files skipped (-s)")
    else:
        for method in methods:
            _b, _m, _w, entries = select(found, Selection(Kind.SCALES, w, base, method))
            jobs.append((Kind.SCALES, method, entries))
    mod_lists: dict[int, list[str]] = {}
    seen: dict[bytes, list[str]] = {}
    for e in found.mod_lists():
        if e.name.base == base and e.name.world == w and e.name.rank < w:
            with timings.phase("parse"):
                mod_lists[e.name.rank] = read_mod_list(e.path, seen)

    with staged_directory(out_dir) as stage:
        writer = SetWriter(stage, timings)
        for kind, _method, entries in jobs:
            files = read_ranks(entries, w, timings)
            encoders: Encoders | None = None
            for g, members_ranks in enumerate(plan):
                members = [files[r] for r in members_ranks]
                with timings.phase("compute"):
                    layout, values, e_local = unify_group(members, kind, expert_parallel)
                if encoders is None or encoders.layout != layout:
                    with timings.phase("encode"):
                        encoders = Encoders(layout)
                first = members[0]
                header = dict(first.header)
                header["GlobalRank"] = None
                header["LocalRank"] = g if r_out != 1 else -1
                name = first.name.renamed(g, r_out)
                writer.write(name, header, layout, values, encoders)
                if kind is Kind.RANGES:
                    names = _unified_mod_list(members, mod_lists, expert_parallel, e_local)
                    if names is not None:
                        writer.write_mod_list(name, names)
                if expert_parallel and g == 0 and kind is Kind.RANGES:
                    if e_local:
                        outcome.notes.append(
                            f"expert-parallel rules: {e_local} local experts per rank -> "
                            f"{e_local * len(members)} per output rank"
                        )
                    else:
                        outcome.notes.append("-u given but the set has no MoE experts: plain max")
        outcome.files = list(writer.written)
    if os.path.abspath(src) == os.path.abspath(out_dir):
        outcome.notes.append(f"written beside the world-{w} files (the old set is kept)")
    return outcome
