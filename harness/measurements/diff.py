"""Compare two measurement sets (or files) node by node."""

from __future__ import annotations

import json
from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import numpy as np

from harness.measurements.layout import struct_items
from harness.measurements.model import MeasurementFile
from harness.measurements.model import load_set
from harness.measurements.model import read_file
from harness.measurements.naming import Kind

_SHOW = 5


@dataclass(frozen=True)
class ValueDiff:
    """One differing number: where it is and both values."""

    rank: int
    node: str
    entry: str
    a: float
    b: float
    abs_diff: float
    rel_diff: float


@dataclass
class DiffReport:
    """Result of :func:`diff`; ``identical`` when nodes, shapes, header and numbers all agree."""

    a: str
    b: str
    ranks: list[int] = field(default_factory=list)
    ranks_only_in_a: list[int] = field(default_factory=list)
    ranks_only_in_b: list[int] = field(default_factory=list)
    only_in_a: dict[int, list[str]] = field(default_factory=dict)
    only_in_b: dict[int, list[str]] = field(default_factory=dict)
    shape_differs: dict[int, list[str]] = field(default_factory=dict)
    header: list[str] = field(default_factory=list)
    nodes_compared: int = 0
    nodes_differing: int = 0
    values_differing: int = 0
    max_abs: ValueDiff | None = None
    max_rel: ValueDiff | None = None
    top: list[ValueDiff] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not (
            self.ranks_only_in_a
            or self.ranks_only_in_b
            or any(self.only_in_a.values())
            or any(self.only_in_b.values())
            or any(self.shape_differs.values())
            or self.header
            or self.values_differing
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["identical"] = self.identical
        for key in ("only_in_a", "only_in_b", "shape_differs"):
            d[key] = {str(k): v for k, v in d[key].items() if v}
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=True)

    def render(self) -> str:
        """Text for the terminal."""
        verdict = (
            "identical"
            if self.identical
            else (
                f"{self.values_differing} values differ in {self.nodes_differing} "
                f"of {self.nodes_compared} nodes"
            )
        )
        lines = [f"diff {self.a} {self.b}: {verdict}", f"  ranks compared: {_ranks(self.ranks)}"]
        if self.ranks_only_in_a:
            lines.append(f"  ranks only in A: {_ranks(self.ranks_only_in_a)}")
        if self.ranks_only_in_b:
            lines.append(f"  ranks only in B: {_ranks(self.ranks_only_in_b)}")
        for title, per_rank in (
            ("only in A", self.only_in_a),
            ("only in B", self.only_in_b),
            ("other shapes", self.shape_differs),
        ):
            for rank, names in sorted(per_rank.items()):
                if names:
                    shown = ", ".join(names[:_SHOW]) + (
                        f" (+{len(names) - _SHOW} more)" if len(names) > _SHOW else ""
                    )
                    lines.append(f"  rank {rank}: {len(names)} nodes {title}: {shown}")
        lines.extend(f"  {h}" for h in self.header)
        if self.max_abs is not None:
            lines.append("  largest absolute difference: " + _value(self.max_abs))
        if self.max_rel is not None:
            lines.append("  largest relative difference: " + _value(self.max_rel))
        if self.top:
            lines.append("  nodes with the largest differences:")
            lines.extend(f"    {_value(v)}" for v in self.top)
        return "\n".join(lines)


def _ranks(ranks: list[int]) -> str:
    return (
        ", ".join(map(str, ranks)) if len(ranks) <= 8 else f"{ranks[0]}-{ranks[-1]} ({len(ranks)})"
    )


def _value(v: ValueDiff) -> str:
    return (
        f"{v.abs_diff:.6g} (relative {v.rel_diff:.3g}) at rank {v.rank} {v.node} {v.entry}: "
        f"{v.a:.8g} vs {v.b:.8g}"
    )


def _load(
    path: Path, kind: Kind, world: int | None, prefix: str | None
) -> dict[int, MeasurementFile]:
    if path.is_file():
        f = read_file(path)
        return {f.rank: f}
    s = load_set(path, kind=kind, world=world, prefix=prefix)
    return {f.rank: f for f in s.files}


def _entry(f: MeasurementFile, node: int, offset: int) -> str:
    for key, idx, start, size, _shape in struct_items(f.layout.structs[node]):
        if start <= offset < start + size:
            return f"{key}[{idx!r}]" if isinstance(idx, str) else f"{key}[{idx}]"
    return ""


def diff(
    a: Path | str,
    b: Path | str,
    *,
    kind: Kind | str = Kind.RANGES,
    top: int = 10,
    world: int | None = None,
    prefix: str | None = None,
) -> DiffReport:
    """Compare sets (directories) or files ``a`` and ``b`` node by node, rank by rank."""
    pa, pb = Path(a), Path(b)
    report = DiffReport(str(pa), str(pb))
    fa = _load(pa, Kind(kind), world, prefix)
    fb = _load(pb, Kind(kind), world, prefix)
    if len(fa) == 1 and len(fb) == 1 and (pa.is_file() or pb.is_file()):
        # two files: compare them whatever their ranks
        (ra, xa), (_rb, xb) = next(iter(fa.items())), next(iter(fb.items()))
        pairs = [(ra, xa, xb)]
    else:
        common = sorted(set(fa) & set(fb))
        report.ranks_only_in_a = sorted(set(fa) - set(fb))
        report.ranks_only_in_b = sorted(set(fb) - set(fa))
        pairs = [(r, fa[r], fb[r]) for r in common]
    candidates: list[ValueDiff] = []
    for rank, x, y in pairs:
        report.ranks.append(rank)
        candidates.extend(_compare(report, rank, x, y, top))
    candidates.sort(key=lambda v: (-v.abs_diff, v.rank, v.node))
    report.top = candidates[:top]
    return report


def _compare(
    report: DiffReport, rank: int, x: MeasurementFile, y: MeasurementFile, top: int
) -> list[ValueDiff]:
    for key in dict.fromkeys([*x.header, *y.header]):
        if x.header.get(key) != y.header.get(key):
            report.header.append(
                f"rank {rank}: {key} {x.header.get(key)!r} vs {y.header.get(key)!r}"
            )
    if x.layout == y.layout:
        nodes = list(range(len(x.layout)))
        vx, vy = x.values, y.values
        starts = x.layout.offsets[:-1]
        y_index = None
    else:
        y_index = y.layout.index()
        x_names = set(x.layout.names)
        report.only_in_a[rank] = [n for n in x.layout.names if n not in y_index]
        report.only_in_b[rank] = [n for n in y.layout.names if n not in x_names]
        nodes = []
        report.shape_differs[rank] = []
        for i, (n, s) in enumerate(zip(x.layout.names, x.layout.structs, strict=True)):
            j = y_index.get(n)
            if j is None:
                continue
            if y.layout.structs[j] != s:
                report.shape_differs[rank].append(n)
                continue
            nodes.append(i)
        if nodes:
            xi = np.concatenate([np.arange(*x.layout.span(i)) for i in nodes])
            yi = np.concatenate(
                [np.arange(*y.layout.span(y_index[x.layout.names[i]])) for i in nodes]
            )
            vx, vy = x.values[xi], y.values[yi]
            sizes = x.layout.offsets[np.asarray(nodes) + 1] - x.layout.offsets[np.asarray(nodes)]
            starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        else:
            vx = vy = np.zeros(0, dtype=np.float32)
            starts = np.zeros(0, dtype=np.int64)
    report.nodes_compared += len(nodes)
    if not vx.size:
        return []
    a64, b64 = vx.astype(np.float64), vy.astype(np.float64)
    both_nan = np.isnan(a64) & np.isnan(b64)
    with np.errstate(invalid="ignore"):
        d = np.where(both_nan, 0.0, np.abs(a64 - b64))
    d = np.where(np.isnan(d), np.inf, d)
    denom = np.maximum(np.abs(a64), np.abs(b64))
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.where(d == 0, 0.0, d / np.where(denom == 0, 1.0, denom))
    rel = np.where(np.isnan(rel), np.inf, rel)
    differing = np.flatnonzero(d > 0)
    report.values_differing += int(differing.size)
    if not differing.size:
        return []

    def at(pos: int) -> ValueDiff:
        k = int(np.searchsorted(starts, pos, side="right")) - 1
        i = nodes[k]
        offset = pos - int(starts[k])
        return ValueDiff(
            rank,
            x.layout.names[i],
            _entry(x, i, offset),
            float(vx[pos]),
            float(vy[pos]),
            float(d[pos]),
            float(rel[pos]),
        )

    pa, pr = int(np.argmax(d)), int(np.argmax(rel))
    if report.max_abs is None or d[pa] > report.max_abs.abs_diff:
        report.max_abs = at(pa)
    if report.max_rel is None or rel[pr] > report.max_rel.rel_diff:
        report.max_rel = at(pr)
    nonempty = np.flatnonzero(np.diff(np.append(starts, d.size)) > 0)
    per_node = np.maximum.reduceat(d, starts[nonempty]) if nonempty.size else np.zeros(0)
    report.nodes_differing += int(np.count_nonzero(per_node > 0))
    best = nonempty[np.argsort(-per_node, kind="stable")[:top]]
    out = []
    for k in best.tolist():
        lo = int(starts[k])
        hi = int(starts[k + 1]) if k + 1 < len(starts) else d.size
        if hi > lo and d[lo:hi].max() > 0:
            out.append(at(lo + int(np.argmax(d[lo:hi]))))
    return out
