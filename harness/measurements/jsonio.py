"""JSON reading and writing of measurement files.

Parsing uses orjson when installed (about 2x faster than the standard library) and falls back to
the standard library, which also accepts the ``NaN``/``Infinity`` tokens Python writes for
non-finite values.

Written files hold the same document as INC's, laid out one node per line::

    {
      "GlobalRank": null,
      "LocalRank": 0,
      "Mode": "DynamicRange",
      "Nodes": {
        "model.layers.0.mlp.down_proj": {"inputs":[[[6.84375]]],"params":{"weight":[[0.2383]]}},
        ...
      }
    }

INC and the public scripts indent by four (12 lines per node); readers do not care, ``grep`` shows
a whole node and a line diff shows the nodes that changed, and the files are a third of the size
(writing the JSON of an expanded DeepSeek set is most of expand's time). Files whose numbers are
not all finite are written with the standard library, so NaN and Infinity survive as INC writes
them (orjson would turn them into null).

:class:`JsonEncoder` builds the text between the numbers once per layout (all ranks of a set
share it) and splices in the numbers as orjson formats them.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from harness.errors import MeasurementError
from harness.measurements.layout import Layout
from harness.measurements.layout import NodeStruct
from harness.measurements.layout import node_doc
from harness.measurements.layout import struct_size

try:  # orjson is a project dependency; the standard library keeps the tools working without it
    import orjson as _orjson
except ImportError:  # pragma: no cover - exercised only where orjson is missing
    _orjson = None  # type: ignore[assignment]

_SENTINEL = 1.2345678901234567e300  # stands for every number while a template is rendered


def decode(raw: bytes, where: str) -> Any:
    """Parse a JSON document, naming the file and position on failure."""
    if _orjson is not None:
        try:
            return _orjson.loads(raw)
        except _orjson.JSONDecodeError:
            pass  # NaN/Infinity tokens, or really broken: the standard library tells which
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MeasurementError(where, f"unparsable JSON: {exc}") from None


def dumps(obj: Any) -> bytes:
    """Indented JSON of plain Python data (finite numbers)."""
    if _orjson is not None:
        return _orjson.dumps(obj, option=_orjson.OPT_INDENT_2)
    return json.dumps(obj, indent=2).encode()


def compact(obj: Any) -> bytes:
    """Compact JSON of plain Python data (finite numbers)."""
    if _orjson is not None:
        return _orjson.dumps(obj)
    return json.dumps(obj, separators=(",", ":")).encode()


def _numbers(values: np.ndarray) -> list[bytes]:
    """The JSON text of each number, formatted as in a whole-document dump."""
    return compact(values.tolist())[1:-1].split(b",")


_HOLE = b"\x00"  # marks a number in a template (JSON text never holds a raw NUL)


def _template(struct: NodeStruct) -> bytes:
    """The compact text of a node of this structure with a NUL byte for each number."""
    text = compact(node_doc(struct, [_SENTINEL] * struct_size(struct), 0))
    marked = text.replace(compact(_SENTINEL), _HOLE)
    if marked.count(_HOLE) != struct_size(
        struct
    ):  # pragma: no cover - a key spelled like the sentinel
        raise ValueError("cannot build a JSON template for this node structure")
    return marked


def _quoted(names: tuple[str, ...]) -> list[bytes]:
    """Each name as a JSON string (quotes included)."""
    if not names:
        return []
    inner = compact(list(names))[2:-2].split(b'","')  # '","' never occurs inside a JSON string
    if len(inner) != len(names):  # pragma: no cover - defensive
        return [compact(n) for n in names]
    return [b'"' + q + b'"' for q in inner]


def _ends(header: dict[str, Any], empty: bool) -> tuple[bytes, bytes]:
    """Text before the first node and after the last one."""
    nodes_open, nodes_close = (b'"Nodes": {', b"}\n}") if empty else (b'"Nodes": {\n', b"\n  }\n}")
    if not header:
        return b"{\n  " + nodes_open, nodes_close
    return dumps(header)[:-2] + b",\n  " + nodes_open, nodes_close


def _slow(header: dict[str, Any], layout: Layout, values: np.ndarray) -> bytes:
    """The same layout through the standard library, for values that are not all finite."""
    vals = values.tolist()
    offsets = layout.offsets.tolist()
    lines = [
        b"    "
        + json.dumps(name).encode()
        + b": "
        + json.dumps(
            node_doc(struct, vals, offsets[k]), separators=(",", ":"), allow_nan=True
        ).encode()
        for k, (name, struct) in enumerate(zip(layout.names, layout.structs, strict=True))
    ]
    head, tail = _ends(header, not lines)
    return head + b",\n".join(lines) + tail


class JsonEncoder:
    """Write JSON files of one layout: text between numbers built once, numbers spliced in."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        templates: dict[int, bytes] = {}
        for struct in layout.structs:
            if id(struct) not in templates:
                templates[id(struct)] = _template(struct)
        keys = [b",\n    " + q + b": " for q in _quoted(layout.names)]
        if keys:
            keys[0] = keys[0][2:]
        parts: list[bytes] = [b""] * (2 * len(keys))
        parts[0::2] = keys
        parts[1::2] = [templates[id(s)] for s in layout.structs]
        # text between numbers: len == numbers + 1
        self.segments = b"".join(parts).split(_HOLE)

    def encode(self, header: dict[str, Any], values: np.ndarray) -> bytes:
        """One file's JSON bytes."""
        if values.size and not bool(np.isfinite(values).all()):
            return _slow(header, self.layout, values)
        head, tail = _ends(header, not len(self.layout))
        parts = self.parts(values)
        parts[0] = head + parts[0]
        parts[-1] = parts[-1] + tail
        return b"".join(parts)

    def parts(self, values: np.ndarray) -> list[bytes]:
        """Text segments interleaved with number texts (finite values)."""
        numbers = _numbers(values) if values.size else []
        parts: list[bytes] = [b""] * (2 * len(numbers) + 1)
        parts[0::2] = self.segments
        parts[1::2] = numbers
        return parts

    def freeze(self, values: np.ndarray, varying: np.ndarray) -> FrozenJson:
        """Pre-join the text of every number except those at ``varying`` (sorted positions)."""
        return FrozenJson(self, values, varying)


class FrozenJson:
    """JSON of one layout whose numbers differ between files only at a few known positions.

    Expand writes N files that differ only in the MoE per-expert slices: the text around those
    numbers is joined once, each file joins a few pieces.
    """

    def __init__(self, encoder: JsonEncoder, values: np.ndarray, varying: np.ndarray) -> None:
        self.encoder = encoder
        self.varying = np.asarray(varying, dtype=np.int64)
        self.finite = not values.size or bool(np.isfinite(values).all())
        self.chunks: list[bytes] = []
        if not self.finite:
            return
        parts = encoder.parts(values)
        prev = 0
        for p in self.varying.tolist():
            self.chunks.append(b"".join(parts[prev : 2 * p + 1]))
            prev = 2 * p + 2
        self.chunks.append(b"".join(parts[prev:]))

    def encode(self, header: dict[str, Any], values: np.ndarray) -> bytes:
        """One file; ``values`` must equal the frozen ones outside the varying positions."""
        if not self.finite or (values.size and not bool(np.isfinite(values).all())):
            return self.encoder.encode(header, values)
        head, tail = _ends(header, not len(self.encoder.layout))
        numbers = _numbers(values[self.varying]) if self.varying.size else []
        parts: list[bytes] = [b""] * (2 * len(numbers) + 1)
        parts[0::2] = self.chunks
        parts[1::2] = numbers
        parts[0] = head + parts[0]
        parts[-1] = parts[-1] + tail
        return b"".join(parts)


def encode(header: dict[str, Any], layout: Layout, values: np.ndarray) -> bytes:
    """A whole measurement file as JSON bytes."""
    return JsonEncoder(layout).encode(header, values)


def encode_list(names: list[str]) -> bytes:
    """A module list file."""
    return dumps(names)
