"""Consistency of the ranks of one measurement set: rank claims, node sets, values, module lists.

Split from check.py (which finds and loads the sets) so each stays readable; the codes are
documented there.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import MeasurementError
from harness.measurements.layout import Layout
from harness.measurements.layout import struct_items
from harness.measurements.model import Entry
from harness.measurements.model import FileGroup
from harness.measurements.model import MeasurementFile
from harness.measurements.model import read_mod_list
from harness.measurements.naming import Kind
from harness.measurements.report import LIST_MAX
from harness.measurements.report import CheckReport
from harness.measurements.report import Severity
from harness.measurements.report import listing
from harness.measurements.report import ranks_text


def locate(layout: Layout, pos: int) -> str:
    """``node field[i]`` of a value position."""
    i = int(np.searchsorted(layout.offsets, pos, side="right")) - 1
    rel = pos - int(layout.offsets[i])
    for key, idx, start, size, _shape in struct_items(layout.structs[i]):
        if start <= rel < start + size:
            return (
                f"{layout.names[i]} {key}[{idx!r}]"
                if isinstance(idx, str)
                else f"{layout.names[i]} {key}[{idx}]"
            )
    return layout.names[i]


def where_text(layout: Layout, positions: np.ndarray) -> str:
    names = [locate(layout, int(p)) for p in positions[: LIST_MAX + 1]]
    return (
        listing(names)
        if positions.size <= LIST_MAX
        else ", ".join(names[:LIST_MAX]) + (f" (+{positions.size - LIST_MAX} more)")
    )


def _pattern(name: str) -> str:
    return re.sub(r"(?<=\.)\d+(?=\.|$)", "N", name)


def check_ranks(report: CheckReport, g: FileGroup, loaded: dict[int, MeasurementFile]) -> None:
    claimed: dict[Any, list[int]] = defaultdict(list)
    for rank, f in loaded.items():
        lr = f.local_rank
        if g.world == 1:
            if lr not in (0, -1, None):
                report.add(
                    Severity.WARNING,
                    "rank-mismatch",
                    f"LocalRank is {lr} in a single-rank set (expected 0 or -1)",
                    f.path,
                )
            continue
        claimed[lr].append(rank)
        if lr != rank:
            report.add(
                Severity.WARNING,
                "rank-mismatch",
                f"LocalRank is {lr} but the file name says rank {rank}: a copied or renamed file?",
                f.path,
            )
    for lr, ranks in claimed.items():
        if len(ranks) > 1:
            report.add(
                Severity.ERROR,
                "duplicate-rank",
                f"{len(ranks)} files hold LocalRank {lr} (file ranks {ranks_text(ranks)}): "
                "one rank was copied over another; restore the calibration output",
                loaded[ranks[0]].path.parent,
            )


def check_nodes(report: CheckReport, loaded: dict[int, MeasurementFile]) -> None:
    ref_rank = min(loaded)
    ref = loaded[ref_rank]
    ref_names = set(ref.layout.names)
    ref_index = ref.layout.index()
    for rank, f in sorted(loaded.items()):
        if rank == ref_rank or f.layout == ref.layout:
            continue
        names = set(f.layout.names)
        missing = sorted(ref_names - names)
        extra = sorted(names - ref_names)
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"lacks {len(missing)} nodes of rank {ref_rank} ({listing(missing)})")
            if extra:
                parts.append(f"has {len(extra)} nodes rank {ref_rank} lacks ({listing(extra)})")
            report.add(
                Severity.ERROR,
                "node-set-differs",
                f"rank {rank} "
                + " and ".join(parts)
                + ": the ranks come from different runs or models",
                f.path,
            )
        differ = [
            n
            for n, s in zip(f.layout.names, f.layout.structs, strict=True)
            if n in ref_index and ref.layout.structs[ref_index[n]] != s
        ]
        if differ:
            report.add(
                Severity.ERROR,
                "shape-differs",
                f"rank {rank}: {len(differ)} nodes have other shapes than on rank {ref_rank} "
                f"({listing(differ)})",
                f.path,
            )


def check_values(report: CheckReport, g: FileGroup, loaded: dict[int, MeasurementFile]) -> None:
    what = "max-abs" if g.kind is Kind.RANGES else "scale"
    for _rank, f in sorted(loaded.items()):
        bad = np.flatnonzero(~np.isfinite(f.values))
        if bad.size:
            report.add(
                Severity.ERROR,
                "non-finite",
                f"{bad.size} values are NaN or infinite ({where_text(f.layout, bad)}): "
                "the calibration overflowed or the file was damaged; re-run the calibration",
                f.path,
            )
        neg = np.flatnonzero(f.values < 0)
        if neg.size:
            report.add(
                Severity.ERROR,
                "negative",
                f"{neg.size} {what} values are negative ({where_text(f.layout, neg)}): "
                "a max-abs or scale is never negative; the file was edited or damaged",
                f.path,
            )


def check_mod_lists(
    report: CheckReport, g: FileGroup, loaded: dict[int, MeasurementFile], mod_entries: list[Entry]
) -> None:
    lists = {
        e.name.rank: e for e in mod_entries if e.name.base == g.base and e.name.world == g.world
    }
    if not lists:
        report.add(
            Severity.INFO,
            "no-mod-list",
            f"no module lists (_mod_list.json) for {g.base} world {g.world}",
            next(iter(loaded.values())).path.parent,
        )
        return
    by_set: dict[frozenset[str], list[int]] = defaultdict(list)
    seen: dict[bytes, list[str]] = {}
    where: dict[frozenset[str], Path] = {}
    for rank, f in sorted(loaded.items()):
        e = lists.get(rank)
        if e is None:
            continue
        try:
            names = read_mod_list(e.path, seen)
        except MeasurementError as exc:
            report.add(Severity.ERROR, "unreadable", exc.reason, exc.path)
            continue
        nodes = set(f.layout.names)
        missing = frozenset(n for n in names if n not in nodes)
        if missing:
            by_set[missing].append(rank)
            where.setdefault(missing, e.path)
    for missing, ranks in by_set.items():
        patterns: dict[str, int] = defaultdict(int)
        for n in missing:
            patterns[_pattern(n)] += 1
        top = sorted(patterns.items(), key=lambda kv: (-kv[1], kv[0]))
        text = listing([f"{p} (x{c})" for p, c in top])
        report.add(
            Severity.WARNING,
            "unmeasured-module",
            f"{len(missing)} modules of the module list have no measurement "
            f"(ranks {ranks_text(ranks)}): {text}; INC patched them but never saw them run: "
            "expected for modules this configuration does not call (softmax beside fused "
            "attention, MoE containers), else the calibration did not exercise them",
            where[missing],
        )
