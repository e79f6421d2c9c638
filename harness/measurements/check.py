"""A measurement doctor: find what would make INC fail or silently cost FP8 accuracy.

Each finding has a severity (error, warning, info), a stable code, a message that says what to
do, and a location (file or directory). Codes:

========================  ========  ==========================================================
code                      severity  meaning
========================  ========  ==========================================================
bad-name                  error     name breaks the ``_<rank>_<world>`` rule
no-files                  error     no measurement files
mixed-prefix              error     several prefixes in one directory
world-mismatch            error     files disagree about the world size
several-sets              info      complete sets of several world sizes (in-place unify)
missing-rank              error     ranks missing from a set
bad-rank                  error     rank not below the world size
duplicate-rank            error     two files hold the same ``LocalRank``
rank-mismatch             warning   ``LocalRank`` differs from the file name
unreadable                error     unparsable or malformed file
missing-npz               error     range file without its ``.npz`` (INC reads the NPZ)
npz-json-mismatch         error     the ``.npz`` and ``.json`` of a rank differ
node-set-differs          error     ranks hold different nodes
shape-differs             error     a node has different shapes on different ranks
non-finite                error     NaN or infinite values
negative                  error     negative max-abs or scale values
unmeasured-module         warning   modules in the module list without a measurement
no-mod-list               info      no ``_mod_list.json``
unrouted-expert           warning   MoE experts whose intermediate amax is 0 (never routed)
expert-parallel           warning   rank-local experts, never unified (error: other target)
expanded                  info      expanded set (all experts, sliced amax)
target-world              error     the set's world size differs from the target
device-mismatch           error     scale files of another Gaudi generation than the target
device-unknown            info      the scales' device cannot be told
stale-scales              warning   scale files older than their range files
========================  ========  ==========================================================
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass
from dataclasses import field as dc_field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import MeasurementError
from harness.measurements import moe
from harness.measurements.layout import LIST
from harness.measurements.layout import Layout
from harness.measurements.layout import field
from harness.measurements.layout import struct_items
from harness.measurements.model import Entry
from harness.measurements.model import MeasurementFile
from harness.measurements.model import _ranks_text
from harness.measurements.model import read_json
from harness.measurements.model import read_mod_list
from harness.measurements.model import read_npz
from harness.measurements.model import scan
from harness.measurements.naming import RANK_RULE
from harness.measurements.naming import Kind
from harness.measurements.naming import parse_file_name
from harness.measurements.npzio import NpzEncoder
from harness.measurements.npzio import has_stream

DEVICES = ("g2", "g3")
_G2_EXPONENTS = {-8, -4, 0, 4}  # Gaudi2 hardware-aligned scales: step 4 in [2^-8, 2^4]
_LIST_MAX = 5


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True)
class Finding:
    severity: Severity
    code: str
    message: str
    location: str

    def to_dict(self) -> dict[str, str]:
        return {
            "severity": self.severity.value,
            "code": self.code,
            "message": self.message,
            "location": self.location,
        }


@dataclass
class CheckReport:
    """Findings of :func:`check` plus a summary of each set it looked at."""

    path: str
    device: str | None = None
    findings: list[Finding] = dc_field(default_factory=list)
    sets: list[dict[str, Any]] = dc_field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity is Severity.ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity is Severity.WARNING]

    @property
    def ok(self) -> bool:
        """No errors (warnings allowed)."""
        return not self.errors

    def codes(self) -> set[str]:
        return {f.code for f in self.findings}

    def add(self, severity: Severity, code: str, message: str, location: Path | str) -> None:
        self.findings.append(Finding(severity, code, message, str(location)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "device": self.device,
            "ok": self.ok,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "findings": [f.to_dict() for f in self.findings],
            "sets": self.sets,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def render(self) -> str:
        """Text for the terminal."""
        lines = [f"check {self.path}: {len(self.errors)} errors, {len(self.warnings)} warnings"]
        for s in self.sets:
            what = f"{s['kind']} ({s['method']})" if s.get("method") else s["kind"]
            lines.append(f"  set {s['prefix']} {what}, world {s['world']}: {s['summary']}")
        order = {Severity.ERROR: 0, Severity.WARNING: 1, Severity.INFO: 2}
        for f in sorted(self.findings, key=lambda f: order[f.severity]):
            lines.append(f"  {f.severity.value:<7} {f.code}: {f.message}")
            lines.append(f"          at {f.location}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------


def _locate(layout: Layout, pos: int) -> str:
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


def _where(layout: Layout, positions: np.ndarray) -> str:
    names = [_locate(layout, int(p)) for p in positions[: _LIST_MAX + 1]]
    return (
        _listing(names)
        if positions.size <= _LIST_MAX
        else ", ".join(names[:_LIST_MAX]) + (f" (+{positions.size - _LIST_MAX} more)")
    )


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_LIST_MAX])
    return shown + (f" (+{len(items) - _LIST_MAX} more)" if len(items) > _LIST_MAX else "")


def _pattern(name: str) -> str:
    return re.sub(r"(?<=\.)\d+(?=\.|$)", "N", name)


@dataclass
class _Group:
    base: str
    kind: Kind
    method: str | None
    world: int
    entries: dict[int, dict[str, Entry]]

    @property
    def complete(self) -> bool:
        return set(self.entries) == set(range(self.world))


def _groups(entries: list[Entry]) -> dict[tuple[str, Kind, str | None], dict[int, _Group]]:
    out: dict[tuple[str, Kind, str | None], dict[int, _Group]] = {}
    for e in entries:
        key = (e.name.base, e.name.kind, e.name.method)
        g = out.setdefault(key, {}).setdefault(
            e.name.world, _Group(e.name.base, e.name.kind, e.name.method, e.name.world, {})
        )
        g.entries.setdefault(e.name.rank, {})[e.name.ext] = e
    return out


def check(
    path: Path | str,
    device: str | None = None,
    *,
    world: int | None = None,
    prefix: str | None = None,
) -> CheckReport:
    """Check a measurement directory (or the set of one file).

    Args:
        path: directory, or one of its files.
        device: target device generation, ``g2`` or ``g3``: scale files of another are errors.
        world: target world size: a set that cannot serve it is an error.
        prefix: check only this prefix.
    """
    if device is not None and device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    path = Path(path)
    directory = path
    if path.is_file():
        name = parse_file_name(path.name)
        directory = path.parent
        if name is not None:
            prefix = name.base
    if not directory.is_dir():
        raise MeasurementError(path, "not a directory of INC measurement files")
    report = CheckReport(str(path), device)
    found = scan(directory, prefix)
    for bad in found.bad_names:
        report.add(
            Severity.ERROR,
            "bad-name",
            f"file name does not follow the rank rule {RANK_RULE}; INC writes such names when "
            "WORLD_SIZE/LOCAL_RANK are unset: rename or remove the file",
            bad,
        )
    data = [e for e in found.entries if not e.name.mod_list]
    if not data:
        report.add(Severity.ERROR, "no-files", "no INC measurement files here", directory)
        return report
    bases = sorted({e.name.base for e in data})
    if len(bases) > 1:
        report.add(
            Severity.ERROR,
            "mixed-prefix",
            f"several prefixes in one directory ({', '.join(bases)}): tools and INC's "
            "dump_stats_path expect one set per directory; move the others out",
            directory,
        )
    groups = _groups(data)
    for (base, kind, _method), by_world in sorted(
        groups.items(), key=lambda kv: (kv[0][0], kv[0][1] is Kind.SCALES, kv[0][2] or "")
    ):
        worlds = sorted(by_world)
        complete = [w for w in worlds if by_world[w].complete]
        if world in complete and len(worlds) > 1:
            # the target's set is here: the others (an in-place unify's source) are not served
            others = ", ".join(str(w) for w in worlds if w != world)
            report.add(
                Severity.INFO,
                "several-sets",
                f"{base} {kind.value}: also holds files of world {others}; checking the world "
                f"{world} set (the target)",
                directory,
            )
            worlds = [world]
        elif len(worlds) > 1:
            text = "; ".join(f"world {w}: ranks {_ranks_text(by_world[w].entries)}" for w in worlds)
            if len(complete) == len(worlds):
                report.add(
                    Severity.INFO,
                    "several-sets",
                    f"{base} {kind.value}: complete sets for several world sizes ({text}); "
                    "each is checked (pick one with --world)",
                    directory,
                )
            else:
                report.add(
                    Severity.ERROR,
                    "world-mismatch",
                    f"{base} {kind.value}: files disagree about the world size ({text}): "
                    "remove the stray files or re-run the step that wrote them",
                    directory,
                )
        for w in worlds:
            g = by_world[w]
            if len(worlds) > 1 and not g.complete and complete:
                continue  # the stray files are the world-mismatch above
            _check_group(report, g, directory, found.mod_lists(), device, world, groups)
    return report


def _load(report: CheckReport, g: _Group, directory: Path) -> dict[int, MeasurementFile]:
    loaded: dict[int, MeasurementFile] = {}
    encoder: NpzEncoder | None = None
    for rank in sorted(g.entries):
        got = g.entries[rank]
        if rank >= g.world:
            where = next(iter(got.values())).path
            report.add(
                Severity.ERROR,
                "bad-rank",
                f"rank {rank} is not below the world size {g.world}",
                where,
            )
            continue
        if "npz" not in got:
            sev = Severity.ERROR if g.kind is Kind.RANGES else Severity.WARNING
            report.add(
                sev,
                "missing-npz",
                f"rank {rank} has a .json but no .npz: INC reads the .npz; "
                "re-run the step that wrote the set",
                got["json"].path,
            )
        like = loaded[min(loaded)].layout if loaded else None
        try:
            if "json" in got:
                f = read_json(got["json"].path, got["json"].name, like=like)
            else:
                f = read_npz(got["npz"].path, got["npz"].name)
        except MeasurementError as exc:
            report.add(Severity.ERROR, "unreadable", exc.reason, exc.path)
            continue
        loaded[rank] = f
        if "json" in got and "npz" in got:
            if encoder is None or encoder.layout != f.layout:
                encoder = NpzEncoder(f.layout)
            if has_stream(got["npz"].path, encoder.stream(f.header, f.values)):
                continue  # byte for byte what the .json says (written by these tools)
            try:
                other = read_npz(got["npz"].path, got["npz"].name)
            except MeasurementError as exc:
                report.add(Severity.ERROR, "unreadable", exc.reason, exc.path)
                continue
            problem = _compare(f, other)
            if problem:
                report.add(
                    Severity.ERROR,
                    "npz-json-mismatch",
                    f"the .npz (what INC reads) and the .json of rank {rank} differ: {problem}; "
                    "re-create both from one source",
                    got["npz"].path,
                )
    missing = sorted(set(range(g.world)) - set(g.entries))
    if missing:
        report.add(
            Severity.ERROR,
            "missing-rank",
            f"{g.base} {g.kind.value}: ranks {_ranks_text(missing)} of world {g.world} are missing "
            f"({len(g.entries)} present): copy them from the calibration output",
            directory,
        )
    return loaded


def _compare(a: MeasurementFile, b: MeasurementFile) -> str | None:
    if a.layout != b.layout:
        names_b = set(b.layout.names)
        gone = [n for n in a.layout.names if n not in names_b]
        if gone:
            return f"node {gone[0]} is only in the .json"
        extra = [n for n in b.layout.names if n not in set(a.layout.names)]
        if extra:
            return f"node {extra[0]} is only in the .npz"
        index = b.layout.index()
        for n, s in zip(a.layout.names, a.layout.structs, strict=True):
            if b.layout.structs[index[n]] != s:
                return f"node {n} has different shapes"
        return (
            None
            if np.array_equal(a.values, _aligned(b, a.layout), equal_nan=True)
            else "values differ"
        )
    diff = np.flatnonzero(~((a.values == b.values) | (np.isnan(a.values) & np.isnan(b.values))))
    if diff.size:
        p = int(diff[0])
        where = _locate(a.layout, p)
        return (
            f"{where} is {a.values[p]:g} in the .json and {b.values[p]:g} in the .npz "
            f"({diff.size} values differ)"
        )
    return None


def _aligned(f: MeasurementFile, layout: Layout) -> np.ndarray:
    index = f.layout.index()
    return (
        np.concatenate([f.values[slice(*f.layout.span(index[n]))] for n in layout.names])
        if len(layout)
        else f.values
    )


def _check_group(
    report: CheckReport,
    g: _Group,
    directory: Path,
    mod_entries: list[Entry],
    device: str | None,
    target_world: int | None,
    groups: dict[tuple[str, Kind, str | None], dict[int, _Group]],
) -> None:
    loaded = _load(report, g, directory)
    summary: dict[str, Any] = {
        "prefix": g.base,
        "kind": g.kind.value,
        "method": g.method,
        "world": g.world,
        "ranks": sorted(loaded),
        "summary": "unreadable",
    }
    report.sets.append(summary)
    if not loaded:
        return
    _ranks(report, g, loaded)
    _nodes(report, loaded)
    _values(report, g, loaded)
    first = loaded[min(loaded)]
    summary["nodes"] = len(first.layout)
    if g.kind is Kind.RANGES:
        status = _moe(report, g, loaded, target_world, summary)
        _mod_lists(report, g, loaded, mod_entries)
    else:
        status = _scales(report, g, loaded, directory, device, groups, summary)
    summary["summary"] = f"{summary['nodes']} nodes, " + status
    if (
        target_world is not None
        and g.kind is Kind.RANGES
        and g.world != target_world
        and "expert" not in status
    ):
        how = (
            f"unify -r {target_world}"
            if target_world < g.world and g.world % target_world == 0
            else "re-calibrate at that size (unify only reduces the world size by a divisor)"
        )
        report.add(
            Severity.ERROR,
            "target-world",
            f"the set is for world {g.world}, the target is {target_world}: {how}",
            directory,
        )


def _ranks(report: CheckReport, g: _Group, loaded: dict[int, MeasurementFile]) -> None:
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
                f"{len(ranks)} files hold LocalRank {lr} (file ranks {_ranks_text(ranks)}): "
                "one rank was copied over another; restore the calibration output",
                loaded[ranks[0]].path.parent,
            )


def _nodes(report: CheckReport, loaded: dict[int, MeasurementFile]) -> None:
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
                parts.append(f"lacks {len(missing)} nodes of rank {ref_rank} ({_listing(missing)})")
            if extra:
                parts.append(f"has {len(extra)} nodes rank {ref_rank} lacks ({_listing(extra)})")
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
                f"({_listing(differ)})",
                f.path,
            )


def _values(report: CheckReport, g: _Group, loaded: dict[int, MeasurementFile]) -> None:
    what = "max-abs" if g.kind is Kind.RANGES else "scale"
    for _rank, f in sorted(loaded.items()):
        bad = np.flatnonzero(~np.isfinite(f.values))
        if bad.size:
            report.add(
                Severity.ERROR,
                "non-finite",
                f"{bad.size} values are NaN or infinite ({_where(f.layout, bad)}): "
                "the calibration overflowed or the file was damaged; re-run the calibration",
                f.path,
            )
        neg = np.flatnonzero(f.values < 0)
        if neg.size:
            report.add(
                Severity.ERROR,
                "negative",
                f"{neg.size} {what} values are negative ({_where(f.layout, neg)}): "
                "a max-abs or scale is never negative; the file was edited or damaged",
                f.path,
            )


def _moe(
    report: CheckReport,
    g: _Group,
    loaded: dict[int, MeasurementFile],
    target_world: int | None,
    summary: dict[str, Any],
) -> str:
    """MoE checks of a range set; returns the status text."""
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
            f"calibration (experts {_listing(experts)}): the calibration data set is too small "
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


def _mod_lists(
    report: CheckReport, g: _Group, loaded: dict[int, MeasurementFile], mod_entries: list[Entry]
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
        text = _listing([f"{p} (x{c})" for p, c in top])
        report.add(
            Severity.WARNING,
            "unmeasured-module",
            f"{len(missing)} modules of the module list have no measurement "
            f"(ranks {_ranks_text(ranks)}): {text}; INC patched them but never saw them run: "
            "expected for modules this configuration does not call (softmax beside fused "
            "attention, MoE containers), else the calibration did not exercise them",
            where[missing],
        )


def infer_device(
    files: list[MeasurementFile], method: str | None, directory: Path
) -> tuple[str | None, str]:
    """The Gaudi generation scale files were computed for, and how that was told."""
    if method and "HW" in method.split("_"):
        vals = np.concatenate([f.values for f in files]) if files else np.zeros(0)
        vals = vals[np.isfinite(vals) & (vals > 0)]
        if vals.size:
            exps = np.log2(vals)
            if np.all(exps == np.round(exps)):
                uniq = {int(e) for e in np.unique(exps)}
                outside = sorted(uniq - _G2_EXPONENTS)
                if outside:
                    return (
                        "g3",
                        f"hardware-aligned scales such as 2^{outside[0]} exist only on Gaudi3",
                    )
                if vals.size >= 16 and len(uniq) >= 2:
                    return "g2", "every hardware-aligned scale is one of Gaudi2's 2^-8, 2^-4, 1, 16"
    for part in reversed(directory.resolve().parts):
        if part.lower() in DEVICES:
            return part.lower(), f"the directory is named {part}"
    return None, ""


def _scales(
    report: CheckReport,
    g: _Group,
    loaded: dict[int, MeasurementFile],
    directory: Path,
    device: str | None,
    groups: dict[tuple[str, Kind, str | None], dict[int, _Group]],
    summary: dict[str, Any],
) -> str:
    found, basis = infer_device(list(loaded.values()), g.method, directory)
    summary["device"] = found
    where = next(iter(loaded.values())).path.parent
    if device is not None:
        if found is None:
            report.add(
                Severity.INFO,
                "device-unknown",
                f"cannot tell which Gaudi the {g.method} scales were computed for",
                where,
            )
        elif found != device:
            full = {"g2": 240, "g3": 448}
            report.add(
                Severity.ERROR,
                "device-mismatch",
                f"the {g.method} scale files were computed for {found} ({basis}) but the target "
                f"is {device}: the FP8 full scale differs ({full[found]} vs {full[device]}); "
                "delete the scale files so INC recomputes them on the target (or set "
                "recalc_scales: true)",
                where,
            )
    ranges = groups.get((g.base, Kind.RANGES, None), {}).get(g.world)
    if ranges is not None:
        stale = []
        for rank in loaded:
            src = ranges.entries.get(rank, {})
            src_time = max((e.path.stat().st_mtime for e in src.values()), default=None)
            own = max(e.path.stat().st_mtime for e in g.entries[rank].values())
            if src_time is not None and own < src_time - 1.0:
                stale.append(rank)
        if stale:
            report.add(
                Severity.WARNING,
                "stale-scales",
                f"{g.method} scale files of ranks {_ranks_text(stale)} are older than their range "
                "files: "
                "INC reuses existing scale files unless recalc_scales is true, so new measurements "
                "would be ignored; delete the scale files or set recalc_scales: true",
                where,
            )
    return f"scales for {found or 'an unknown device'}" + (f" ({basis})" if found else "")
