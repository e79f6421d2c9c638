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

from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import MeasurementError
from harness.measurements.consistency import check_mod_lists
from harness.measurements.consistency import check_nodes
from harness.measurements.consistency import check_ranks
from harness.measurements.consistency import check_values
from harness.measurements.consistency import locate
from harness.measurements.device import DEVICES
from harness.measurements.device import check_scales
from harness.measurements.device import infer_device
from harness.measurements.experts import check_experts
from harness.measurements.layout import Layout
from harness.measurements.model import Entry
from harness.measurements.model import FileGroup
from harness.measurements.model import MeasurementFile
from harness.measurements.model import group_files
from harness.measurements.model import read_json
from harness.measurements.model import read_npz
from harness.measurements.model import scan
from harness.measurements.naming import RANK_RULE
from harness.measurements.naming import Kind
from harness.measurements.naming import parse_file_name
from harness.measurements.npzio import NpzEncoder
from harness.measurements.npzio import has_stream
from harness.measurements.report import CheckReport
from harness.measurements.report import Finding
from harness.measurements.report import Severity
from harness.measurements.report import ranks_text

__all__ = ["DEVICES", "CheckReport", "Finding", "Severity", "check", "infer_device"]


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
    groups = group_files(data)
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
            text = "; ".join(f"world {w}: ranks {ranks_text(by_world[w].entries)}" for w in worlds)
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


def _load(report: CheckReport, g: FileGroup, directory: Path) -> dict[int, MeasurementFile]:
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
            f"{g.base} {g.kind.value}: ranks {ranks_text(missing)} of world {g.world} are missing "
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
        where = locate(a.layout, p)
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
    g: FileGroup,
    directory: Path,
    mod_entries: list[Entry],
    device: str | None,
    target_world: int | None,
    groups: dict[tuple[str, Kind, str | None], dict[int, FileGroup]],
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
    check_ranks(report, g, loaded)
    check_nodes(report, loaded)
    check_values(report, g, loaded)
    first = loaded[min(loaded)]
    summary["nodes"] = len(first.layout)
    if g.kind is Kind.RANGES:
        status = check_experts(report, g, loaded, target_world, summary)
        check_mod_lists(report, g, loaded, mod_entries)
    else:
        status = check_scales(report, g, loaded, directory, device, groups, summary)
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
