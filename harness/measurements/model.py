"""Measurement sets: find, read and write the per-rank files of one INC measurement.

A *set* is the files of one prefix, kind (ranges or scales; for scales, one method) and world
size in one directory: ``<prefix>[_<METHOD>]_<rank>_<world>.json|.npz`` for every rank, plus the
module lists ``<prefix>_<rank>_<world>_mod_list.json`` of the range files. Each rank is read
from its JSON (the tools' source) or, when there is none, from its NPZ (what INC reads).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import MeasurementError
from harness.measurements import jsonio
from harness.measurements import npzio
from harness.measurements.layout import Layout
from harness.measurements.layout import node_doc
from harness.measurements.layout import nodes_doc
from harness.measurements.naming import RANK_RULE
from harness.measurements.naming import FileName
from harness.measurements.naming import Kind
from harness.measurements.naming import looks_like_measurement
from harness.measurements.naming import parse_file_name
from harness.measurements.outcome import Timings
from harness.measurements.parse import from_json_nodes
from harness.measurements.parse import from_npz_nodes
from harness.measurements.report import ranks_text


@dataclass
class MeasurementFile:
    """One rank of a set: top-level fields, node layout and the flat float32 values."""

    name: FileName  # the JSON name of this rank, whichever file was read
    path: Path  # the file that was read
    header: dict[str, Any]  # top-level fields other than Nodes, in file order
    layout: Layout
    values: np.ndarray

    @property
    def rank(self) -> int:
        return self.name.rank

    @property
    def mode(self) -> Any:
        return self.header.get("Mode")

    @property
    def local_rank(self) -> Any:
        return self.header.get("LocalRank")

    def node(self, name: str) -> dict[str, Any]:
        """One node as JSON-ready data (``{"inputs": [[[m]]], ...}``)."""
        i = self.layout.index()[name]
        start, stop = self.layout.span(i)
        return node_doc(self.layout.structs[i], self.values[start:stop].tolist(), 0)

    def to_doc(self) -> dict[str, Any]:
        """The whole file as JSON-ready data."""
        doc = dict(self.header)
        doc["Nodes"] = nodes_doc(self.layout, self.values.tolist())
        return doc


@dataclass
class MeasurementSet:
    """The files of one prefix, kind and world size in one directory, indexed by rank."""

    directory: Path
    prefix: str
    kind: Kind
    method: str | None
    world: int
    files: list[MeasurementFile]
    mod_lists: dict[int, list[str]] = field(default_factory=dict)

    @property
    def ranks(self) -> list[int]:
        return [f.rank for f in self.files]

    def describe(self) -> str:
        what = f"{self.kind.value} ({self.method})" if self.method else self.kind.value
        return f"{self.directory}: {self.prefix} {what}, world {self.world}"


# ---------------------------------------------------------------------------------------------
# Scanning a directory


@dataclass(frozen=True)
class Entry:
    name: FileName
    path: Path


@dataclass
class Scan:
    """Measurement files of a directory, parsed by name only."""

    directory: Path
    entries: list[Entry]
    bad_names: list[Path]

    def data(self) -> list[Entry]:
        return [e for e in self.entries if not e.name.mod_list]

    def mod_lists(self) -> list[Entry]:
        return [e for e in self.entries if e.name.mod_list]


def scan(directory: Path | str, prefix: str | None = None) -> Scan:
    """List the measurement files of ``directory`` (hidden entries are skipped)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise MeasurementError(
            directory, "not a directory (expected a directory of INC measurement files)"
        )
    entries: list[Entry] = []
    bad: list[Path] = []
    with os.scandir(directory) as it:
        names = sorted(e.name for e in it if not e.name.startswith(".") and e.is_file())
    for n in names:
        parsed = parse_file_name(n)
        if parsed is None:
            if looks_like_measurement(n) and (prefix is None or n.startswith(prefix)):
                bad.append(directory / n)
            continue
        if prefix is not None and not _matches_prefix(parsed.base, prefix):
            continue
        entries.append(Entry(parsed, directory / n))
    return Scan(directory, entries, bad)


def _matches_prefix(base: str, prefix: str) -> bool:
    return base == prefix or base.startswith(prefix + "_hooks_")


def bad_name_error(path: Path) -> MeasurementError:
    return MeasurementError(
        path,
        f"file name does not follow the rank rule {RANK_RULE}; INC writes names without "
        "_<rank>_<world> when WORLD_SIZE/LOCAL_RANK are unset: rename the file or move it out",
    )


@dataclass(frozen=True)
class Selection:
    """Which set of a directory to use."""

    kind: Kind = Kind.RANGES
    world: int | None = None
    prefix: str | None = None
    method: str | None = None


def select(found: Scan, sel: Selection) -> tuple[str, str | None, int, dict[int, dict[str, Entry]]]:
    """Pick one set from a scan: (prefix, method, world, rank -> {ext: entry}).

    Raises MeasurementError for bad names, mixed prefixes, several worlds or methods without a
    choice, and missing ranks.
    """
    where = found.directory
    if found.bad_names:
        raise bad_name_error(found.bad_names[0])
    data = found.data()
    if not data:
        raise MeasurementError(
            where, "no INC measurement files (<prefix>_hooks_<observer>_<rank>_<world>.json|.npz)"
        )
    bases = sorted({e.name.base for e in data})
    if len(bases) > 1:
        counts = ", ".join(f"{b} ({sum(e.name.base == b for e in data)} files)" for b in bases)
        raise MeasurementError(
            where,
            f"mixed prefixes in one directory: {counts}; keep one set per directory or pass "
            "a prefix",
        )
    prefix = bases[0]
    of_kind = [e for e in data if e.name.kind is sel.kind]
    if not of_kind:
        raise MeasurementError(where, f"no {sel.kind.value} files for prefix {prefix}")
    methods = sorted({e.name.method or "" for e in of_kind})
    method: str | None = sel.method
    if method is None:
        if len(methods) > 1:
            raise MeasurementError(
                where, f"scale files of several methods ({', '.join(methods)}); pick one"
            )
        method = methods[0] or None
    of_method = [e for e in of_kind if e.name.method == method]
    if not of_method:
        raise MeasurementError(
            where, f"no scale files of method {method} (found {', '.join(methods)})"
        )
    worlds = sorted({e.name.world for e in of_method})
    world = sel.world
    if world is None:
        if len(worlds) > 1:
            ranks = {w: [e.name.rank for e in of_method if e.name.world == w] for w in worlds}
            groups = "; ".join(f"world {w}: ranks {ranks_text(ranks[w])}" for w in worlds)
            raise MeasurementError(
                where,
                f"files of several world sizes ({groups}); pick one with --world (library: world=)",
            )
        world = worlds[0]
    chosen = [e for e in of_method if e.name.world == world]
    if not chosen:
        raise MeasurementError(
            where, f"no {sel.kind.value} files for world {world} (found worlds {worlds})"
        )
    by_rank: dict[int, dict[str, Entry]] = {}
    for e in chosen:
        by_rank.setdefault(e.name.rank, {})[e.name.ext] = e
    outside = sorted(r for r in by_rank if r >= world)
    if outside:
        raise MeasurementError(
            where, f"rank {outside[0]} is not below the world size {world} ({prefix})"
        )
    missing = sorted(set(range(world)) - set(by_rank))
    if missing:
        raise MeasurementError(
            where,
            f"missing ranks {ranks_text(missing)} of world {world} "
            f"(found {len(by_rank)} of {world} {sel.kind.value} files for {prefix})",
        )
    return prefix, method, world, by_rank


@dataclass
class FileGroup:
    """The files of one prefix, kind, method and world size (possibly incomplete)."""

    base: str
    kind: Kind
    method: str | None
    world: int
    entries: dict[int, dict[str, Entry]]

    @property
    def complete(self) -> bool:
        return set(self.entries) == set(range(self.world))


def group_files(
    entries: list[Entry],
) -> dict[tuple[str, Kind, str | None], dict[int, FileGroup]]:
    """Measurement files by (prefix, kind, method), then by world size."""
    out: dict[tuple[str, Kind, str | None], dict[int, FileGroup]] = {}
    for e in entries:
        key = (e.name.base, e.name.kind, e.name.method)
        g = out.setdefault(key, {}).setdefault(
            e.name.world, FileGroup(e.name.base, e.name.kind, e.name.method, e.name.world, {})
        )
        g.entries.setdefault(e.name.rank, {})[e.name.ext] = e
    return out


# ---------------------------------------------------------------------------------------------
# Reading


def _header(doc: dict[str, Any], where: Path, expected: Kind | None) -> dict[str, Any]:
    if "Nodes" not in doc:
        raise MeasurementError(where, "no 'Nodes' key: not an INC measurement file")
    header = {k: v for k, v in doc.items() if k != "Nodes"}
    mode = header.get("Mode")
    if expected is Kind.SCALES and mode != "Scale":
        raise MeasurementError(
            where, f"the name says scale file but Mode is {mode!r}, expected 'Scale'"
        )
    if expected is Kind.RANGES and mode == "Scale":
        raise MeasurementError(
            where, "the name says range file but Mode is 'Scale' (scale files carry the method)"
        )
    return header


def read_json(
    path: Path,
    name: FileName | None = None,
    timings: Timings | None = None,
    like: Layout | None = None,
) -> MeasurementFile:
    """Read one rank from its JSON (``like``: the layout it probably shares, read faster)."""
    timings = timings or Timings()
    name = name or _name_of(path)
    with timings.phase("parse"):
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise MeasurementError(path, f"cannot read: {exc.strerror}") from None
        doc = jsonio.decode(raw, str(path))
        if not isinstance(doc, dict):
            raise MeasurementError(path, f"top level is a {type(doc).__name__}, expected an object")
        header = _header(doc, path, name.kind)
        layout, values = from_json_nodes(doc["Nodes"], str(path), like)
    return MeasurementFile(name.with_ext("json"), path, header, layout, values)


def read_npz(
    path: Path, name: FileName | None = None, timings: Timings | None = None
) -> MeasurementFile:
    """Read one rank from its NPZ file."""
    timings = timings or Timings()
    name = name or _name_of(path)
    with timings.phase("parse"):
        doc = npzio.read(path)
        header = _header(doc, path, name.kind)
        layout, values = from_npz_nodes(doc["Nodes"], str(path))
    return MeasurementFile(name.with_ext("json"), path, header, layout, values)


def read_file(path: Path | str, timings: Timings | None = None) -> MeasurementFile:
    """Read one measurement file (JSON or NPZ)."""
    path = Path(path)
    name = _name_of(path)
    return read_npz(path, name, timings) if name.ext == "npz" else read_json(path, name, timings)


def _name_of(path: Path) -> FileName:
    name = parse_file_name(path.name)
    if name is None or name.mod_list:
        raise bad_name_error(path)
    return name


def read_mod_list(path: Path, seen: dict[bytes, list[str]] | None = None) -> list[str]:
    """Read a ``_mod_list.json`` file: a JSON list of module names.

    ``seen`` caches lists by content: the ranks of a set usually share one list.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise MeasurementError(path, f"cannot read: {exc.strerror}") from None
    if seen is not None and raw in seen:
        return seen[raw]
    names = jsonio.decode(raw, str(path))
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise MeasurementError(path, "a module list must be a JSON list of module names")
    if seen is not None:
        seen[raw] = names
    return names


def load_set(
    path: Path | str,
    *,
    kind: Kind | str = Kind.RANGES,
    world: int | None = None,
    prefix: str | None = None,
    method: str | None = None,
    timings: Timings | None = None,
) -> MeasurementSet:
    """Read a measurement set.

    Args:
        path: a directory; or one of its files (selects that file's set); or
            ``<directory>/<dump_stats_path name>`` as in the INC config (selects the prefix).
        kind: ``ranges`` (``Mode: DynamicRange``) or ``scales`` (``Mode: Scale``).
        world: the world size, needed when the directory holds sets of several sizes.
        prefix: the file prefix, needed when the directory holds several.
        method: the scale method (``MAXABS_HW``), needed when several are present.

    Raises:
        MeasurementError: naming the file and the problem.
    """
    path = Path(path)
    sel_kind = Kind(kind)
    directory = path
    if path.is_file():
        name = _name_of(path)
        directory = path.parent
        prefix, world, sel_kind = name.base, name.world, name.kind
        method = name.method
    elif not path.is_dir() and path.parent.is_dir():
        directory, prefix = path.parent, path.name
    found = scan(directory, prefix)
    base, method, world, by_rank = select(found, Selection(sel_kind, world, prefix, method))
    timings = timings or Timings()
    files = read_ranks(by_rank, world, timings)
    mod_lists: dict[int, list[str]] = {}
    seen: dict[bytes, list[str]] = {}
    if sel_kind is Kind.RANGES:
        for e in found.mod_lists():
            if e.name.base == base and e.name.world == world and e.name.rank < world:
                with timings.phase("parse"):
                    mod_lists[e.name.rank] = read_mod_list(e.path, seen)
    return MeasurementSet(Path(directory), base, sel_kind, method, world, files, mod_lists)


def read_ranks(
    by_rank: dict[int, dict[str, Entry]], world: int, timings: Timings | None = None
) -> list[MeasurementFile]:
    """Read ranks ``0..world-1`` (JSON preferred); ranks sharing rank 0's layout read faster."""
    files: list[MeasurementFile] = []
    for rank in range(world):
        got = by_rank[rank]
        like = files[0].layout if files else None
        if "json" in got:
            files.append(read_json(got["json"].path, got["json"].name, timings, like))
        else:
            files.append(read_npz(got["npz"].path, got["npz"].name, timings))
    return files
