"""Postprocess measurements: feed the KV-cache ranges to the attention matmuls (public step 3).

In every attention block the second input of ``matmul_qk`` becomes the input of the k-cache and
the second input of ``matmul_av`` the input of the v-cache, so the matmuls and the fp8 KV cache
use one scale. DeepSeek MLA (``deepseek=True``, CLI ``-d``) has one latent cache: both take the
input of ``latent_cache_k``. Range and scale files of every rank are fixed alike; module lists
are copied, so the output directory holds a complete set.

Attention blocks are found by name (every ``<block>.matmul_qk`` / ``<block>.matmul_av`` with its
cache beside it), where the public script builds ``model.layers.<i>.self_attn.<attn>.impl.*``
names with ``attn`` or ``mla_attn.mla_attn``. On names it knows the result is the same; on
current vLLM-Gaudi DeepSeek sets (``self_attn.mla_attn.impl``) and gpt-oss (``attn.attn.impl``)
the public script silently changes nothing, while this finds the blocks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.errors import MeasurementError
from harness.measurements.atomic import staged_directory
from harness.measurements.layout import LIST
from harness.measurements.layout import Layout
from harness.measurements.layout import LayoutBuilder
from harness.measurements.layout import field
from harness.measurements.layout import replace_field
from harness.measurements.layout import struct_items
from harness.measurements.model import MeasurementFile
from harness.measurements.model import Selection
from harness.measurements.model import read_json
from harness.measurements.model import read_mod_list
from harness.measurements.model import read_npz
from harness.measurements.model import scan
from harness.measurements.model import select
from harness.measurements.outcome import Outcome
from harness.measurements.outcome import Timings
from harness.measurements.writer import Encoders
from harness.measurements.writer import SetWriter

_QK = ".matmul_qk"
_AV = ".matmul_av"


def _item(layout: Layout, i: int, key: str, index: int) -> tuple[int, int, tuple[int, ...]] | None:
    """Absolute start, size and shape of entry ``key[index]`` of node ``i``."""
    base = int(layout.offsets[i])
    for k, idx, start, size, shape in struct_items(layout.structs[i]):
        if k == key and idx == index:
            return base + start, size, shape
    return None


def fix_cache_inputs(
    f: MeasurementFile, deepseek: bool
) -> tuple[Layout, np.ndarray, int, int, list[str]]:
    """Fix one file: (layout, values, blocks found, entries changed, cache names missing)."""
    k_cache = "latent_cache_k" if deepseek else "k_cache"
    v_cache = "latent_cache_k" if deepseek else "v_cache"
    lay = f.layout
    index = lay.index()
    values = f.values.copy()
    blocks = list(
        dict.fromkeys(
            n[: -len(_QK)] if n.endswith(_QK) else n[: -len(_AV)]
            for n in lay.names
            if n.endswith((_QK, _AV))
        )
    )
    changed = 0
    missing: list[str] = []
    reshaped: dict[int, tuple[int, np.ndarray]] = {}  # node -> (position of input 1, new values)
    for block in blocks:
        for matmul, cache in (
            (block + _QK, f"{block}.{k_cache}"),
            (block + _AV, f"{block}.{v_cache}"),
        ):
            i = index.get(matmul)
            if i is None:
                continue
            j = index.get(cache)
            if j is None:
                missing.append(cache)
                continue
            dst = _item(lay, i, "inputs", 1)
            src = _item(lay, j, "inputs", 0)
            if dst is None or src is None:
                raise MeasurementError(
                    f.path, f"{matmul} needs two inputs and {cache} one to copy the cache range"
                )
            new = f.values[src[0] : src[0] + src[1]]
            if dst[2] == src[2]:
                if not np.array_equal(values[dst[0] : dst[0] + dst[1]], new):
                    changed += 1
                values[dst[0] : dst[0] + dst[1]] = new
            else:  # a different shape: the node is rebuilt below
                reshaped[i] = (j, new)
                changed += 1
    if not reshaped:
        return lay, values, len(blocks), changed, missing
    out = LayoutBuilder()
    prev = 0
    for i in sorted(reshaped):
        out.extend(lay, values, prev, i)
        prev = i + 1
        j, new = reshaped[i]
        struct = lay.structs[i]
        shapes = list(field(struct, "inputs")[2])  # type: ignore[index]
        shapes[1] = _item(lay, j, "inputs", 0)[2]  # type: ignore[index]
        start, stop = lay.span(i)
        dst = _item(lay, i, "inputs", 1)
        assert dst is not None
        node_values = np.concatenate([values[start : dst[0]], new, values[dst[0] + dst[1] : stop]])
        out.add(lay.names[i], replace_field(struct, ("inputs", LIST, tuple(shapes))), node_values)
    out.extend(lay, values, prev, len(lay))
    layout, vals = out.build()
    return layout, vals, len(blocks), changed, missing


def postprocess(
    src_dir: Path | str, out_dir: Path | str, deepseek: bool = False, *, prefix: str | None = None
) -> Outcome:
    """Fix the KV-cache inputs of every file in ``src_dir``; write the set to ``out_dir``."""
    src = Path(src_dir)
    timings = Timings()
    outcome = Outcome("postprocess", src, Path(out_dir), timings=timings)
    found = scan(src, prefix)
    select(found, Selection())  # bad names, mixed prefixes, no range files: one clear error
    groups = sorted(
        {(e.name.kind, e.name.method, e.name.world) for e in found.data()},
        key=lambda g: (g[2], g[0].value, g[1] or ""),
    )
    blocks = changed = 0
    missing: set[str] = set()
    with staged_directory(out_dir) as stage:
        writer = SetWriter(stage, timings)
        encoders: Encoders | None = None
        for kind, method, world in groups:
            _b, _m, _w, entries = select(found, Selection(kind, world, prefix, method))
            for rank in range(world):
                got = entries[rank]
                if "json" in got:
                    f = read_json(got["json"].path, got["json"].name, timings)
                else:
                    f = read_npz(got["npz"].path, got["npz"].name, timings)
                with timings.phase("compute"):
                    layout, values, n_blocks, n_changed, n_missing = fix_cache_inputs(f, deepseek)
                blocks = max(blocks, n_blocks)
                changed += n_changed
                missing.update(n_missing)
                if encoders is None or encoders.layout != layout:
                    with timings.phase("encode"):
                        encoders = Encoders(layout)
                writer.write(f.name, f.header, layout, values, encoders)
        for e in found.mod_lists():
            writer.write_mod_list(e.name, read_mod_list(e.path))
        outcome.files = list(writer.written)
    outcome.notes.append(f"{blocks} attention blocks per file; {changed} matmul inputs changed")
    if missing:
        example = sorted(missing)[0]
        hint = "" if deepseek else "; DeepSeek MLA sets keep one latent cache: use -d"
        if deepseek:
            hint = "; -d expects DeepSeek MLA attention (latent_cache_k)"
        outcome.notes.append(
            f"{len(missing)} caches not found beside their matmuls (e.g. {example}){hint}"
        )
    if not blocks:
        outcome.notes.append(
            "no attention matmuls (matmul_qk/matmul_av) found: files copied unchanged"
        )
    return outcome
