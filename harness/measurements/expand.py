"""Expand a unified single-rank set to N expert-parallel ranks (the public step-6 tool, fast).

Semantics (DESIGN.md "Measurement tools semantics"): from ``<prefix>_0_1`` write N files
``<prefix>_<r>_<N>`` with ``LocalRank`` r (``GlobalRank`` null). Each keeps every node; each MoE
op keeps ``outputs[0]`` plus the slice ``[r*E/N, (r+1)*E/N)`` of its per-expert amax
(``outputs[1:]``). E % N must be 0. Only range files are expanded (as by the public tool): INC
computes the scales of the expanded ranks from them.

Every rank shares all but its MoE slices and ``LocalRank``: the JSON text and the NPZ pickle
skeleton are built once and each rank only splices in its slices.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.errors import MeasurementError
from harness.measurements import moe
from harness.measurements.atomic import staged_directory
from harness.measurements.layout import LIST
from harness.measurements.layout import Layout
from harness.measurements.layout import field
from harness.measurements.layout import replace_field
from harness.measurements.layout import struct_items
from harness.measurements.model import Entry
from harness.measurements.model import MeasurementFile
from harness.measurements.model import Selection
from harness.measurements.model import read_json
from harness.measurements.model import read_mod_list
from harness.measurements.model import read_npz
from harness.measurements.model import scan
from harness.measurements.model import select
from harness.measurements.naming import Kind
from harness.measurements.outcome import Outcome
from harness.measurements.outcome import Timings
from harness.measurements.writer import Encoders
from harness.measurements.writer import SetWriter


class _MoeOp:
    """A MoE op of the source: where its per-expert values sit, and how many experts it has."""

    def __init__(self, index: int, start: int, lo: int, hi: int, experts: int) -> None:
        self.index = index  # node position
        self.start = start  # first value of the node
        self.lo = lo  # first per-expert value
        self.hi = hi  # end of the per-expert values
        self.experts = experts


def _moe_ops(src: MeasurementFile) -> list[_MoeOp]:
    lay = src.layout
    experts = moe.experts_per_op(lay.names)
    ops: list[_MoeOp] = []
    for i, name in enumerate(lay.names):
        if not moe.is_moe_op(name):
            continue
        struct = lay.structs[i]
        f = field(struct, "outputs")
        if f is None or f[1] != LIST or len(f[2]) < 2:
            continue
        count = len(f[2]) - 1
        have = experts.get(name)
        if have is not None and len(have) != count:
            raise MeasurementError(
                src.path,
                f"{name} holds {count} per-expert amax values but {len(have)} experts: this is not "
                "a unified set (an expanded set holds every expert but only its slice of the "
                "amax); expand the output of unify -r 1 -u",
            )
        items = [it for it in struct_items(struct) if it[0] == "outputs"]
        s = int(lay.offsets[i])
        ops.append(_MoeOp(i, s, s + items[1][2], s + items[-1][2] + items[-1][3], count))
    return ops


def _plan(
    src: MeasurementFile, ops: list[_MoeOp], world: int
) -> tuple[Layout, list[np.ndarray], np.ndarray]:
    """The layout all ranks share, each rank's gather index into the source, varying positions."""
    lay = src.layout
    structs = list(lay.structs)
    spans: list[
        tuple[int, int, int, int]
    ] = []  # (source start, per-expert start, size of one, per rank)
    for op in ops:
        struct = lay.structs[op.index]
        shapes = field(struct, "outputs")[2]  # type: ignore[index]
        if any(s != shapes[1] for s in shapes[1:]):  # pragma: no cover - INC writes one shape
            raise MeasurementError(
                src.path, f"{lay.names[op.index]}: per-expert amax of different shapes"
            )
        per = op.experts // world
        structs[op.index] = replace_field(
            struct, ("outputs", LIST, (shapes[0],) + shapes[1 : 1 + per])
        )
        spans.append((op.lo, op.hi, (op.hi - op.lo) // op.experts, per))
    layout = Layout(lay.names, tuple(structs))
    # rank 0's gather index and where the per-expert values land; rank r shifts those by r slices
    pieces: list[np.ndarray] = []
    varying: list[np.ndarray] = []
    pos = out = 0
    for lo, hi, one, per in spans:
        pieces.append(np.arange(pos, lo))
        out += lo - pos
        pieces.append(np.arange(lo, lo + per * one))
        varying.append(np.arange(out, out + per * one))
        out += per * one
        pos = hi
    pieces.append(np.arange(pos, lay.size))
    base = np.concatenate(pieces)
    var = np.concatenate(varying) if varying else np.zeros(0, dtype=np.int64)
    shift = np.zeros_like(base)
    for (_lo, _hi, one, per), v in zip(spans, varying, strict=True):
        shift[v] = per * one
    return layout, [base + r * shift for r in range(world)], var


def _source(
    src: Path, prefix: str | None, timings: Timings
) -> tuple[MeasurementFile, list[str] | None]:
    found = scan(src, prefix)
    if found.bad_names:
        select(found, Selection())  # raises the bad-name error
    ranges = [e for e in found.data() if e.name.kind is Kind.RANGES]
    worlds = sorted({e.name.world for e in ranges})
    if ranges and 1 not in worlds:
        sample = min(
            (e for e in ranges if e.name.world == worlds[0]),
            key=lambda e: (e.name.rank, e.name.ext),
        )
        what = f"world {', '.join(map(str, worlds))}"
        if _looks_expanded(sample, timings):
            raise MeasurementError(
                src,
                f"this is an expanded set ({what}: every rank holds all experts and a slice of "
                "their amax) and cannot be expanded again; expand the unified single-rank set it "
                "came from",
            )
        raise MeasurementError(
            src,
            f"expand needs a unified single-rank set (<prefix>_0_1.json) but the files are of "
            f"{what}: unify them with -r 1 -u first, then expand that",
        )
    _base, _m, _w, entries = select(found, Selection(Kind.RANGES, 1, prefix))
    got = entries[0]
    if "json" in got:
        source = read_json(got["json"].path, got["json"].name, timings)
    else:
        source = read_npz(got["npz"].path, got["npz"].name, timings)
    mod_list = None
    for e in found.mod_lists():
        if e.name.base == source.name.base and e.name.world == 1 and e.name.rank == 0:
            mod_list = read_mod_list(e.path)
    return source, mod_list


def _looks_expanded(entry: Entry, timings: Timings) -> bool:
    try:
        f = (
            read_json(entry.path, entry.name, timings)
            if entry.name.ext == "json"
            else read_npz(entry.path, entry.name, timings)
        )
        _moe_ops(f)
    except MeasurementError:
        return True  # _moe_ops refuses per-expert counts that differ from the expert count
    return False


def expand(
    src_dir: Path | str, out_dir: Path | str, world: int, *, prefix: str | None = None
) -> Outcome:
    """Expand the unified single-rank set in ``src_dir`` to ``world`` ranks, into ``out_dir``."""
    src = Path(src_dir)
    timings = Timings()
    outcome = Outcome("expand", src, Path(out_dir), timings=timings)
    if world < 1:
        raise MeasurementError(src, f"the target world size must be at least 1, got -w {world}")
    source, mod_list = _source(src, prefix, timings)
    with timings.phase("compute"):
        ops = _moe_ops(source)
        counts = sorted({op.experts for op in ops})
        for count in counts:
            if count % world:
                options = ", ".join(str(d) for d in range(1, count + 1) if count % d == 0)
                raise MeasurementError(
                    source.path,
                    f"{count} experts are not divisible by -w {world}; use one of {options}",
                )
        layout, indexes, varying = _plan(source, ops, world)
    if not ops:
        outcome.notes.append(
            "no MoE op with per-expert amax: every rank gets the same measurements"
        )
    else:
        outcome.notes.append(
            f"{len(ops)} MoE ops, {counts[-1]} experts -> {counts[-1] // world} per rank"
        )
    has_scales = any(e.name.kind is Kind.SCALES for e in scan(src, prefix).data())
    if has_scales:
        outcome.notes.append(
            "scale files not expanded (INC computes them from the expanded ranges)"
        )

    with staged_directory(out_dir) as stage:
        writer = SetWriter(stage, timings)
        with timings.phase("encode"):
            encoders = Encoders(layout)
            frozen = encoders.json.freeze(source.values[indexes[0]], varying)
        for r, index in enumerate(indexes):
            with timings.phase("compute"):
                values = source.values[index]
            header = dict(source.header)
            header["GlobalRank"] = None
            header["LocalRank"] = r
            name = source.name.renamed(r, world)
            with timings.phase("encode"):
                text = frozen.encode(header, values)
                chunks = encoders.npz.stream(header, values)
            writer.write_encoded(name, text, chunks)
            if mod_list is not None:
                writer.write_mod_list(name, mod_list)
        outcome.files = list(writer.written)
    return outcome
