"""Layouts: the structure of a measurement file (node names, fields, shapes) apart from its numbers.

A file's ``Nodes`` are held as a :class:`Layout` plus one flat float32 vector with every number in
layout order (node by node, field by field, item by item, C order inside an item). Ranks of one
set share their layout, so unify is a vectorised max and expand shares all but the MoE slices.

A node's structure is a tuple of fields; each field is ``(key, kind, items)``:

* ``"list"``: a JSON list of entries (``inputs``, ``outputs``); items are the entry shapes.
* ``"dict"``: a mapping of entries (``params``); items are ``(name, shape)`` pairs.
* ``"value"``: a single entry (an ``outputs`` stored as one array); items is ``(shape,)``.
* ``"null"``: JSON null.

Shapes are those of the numbers: ``[[m]]`` is ``(1, 1)``, ``[[c0], [c1]]`` is ``(2, 1)``, a bare
number in a scale file is ``()``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from harness.errors import MeasurementError

Shape = tuple[int, ...]
Field = tuple[str, str, tuple[Any, ...]]
NodeStruct = tuple[Field, ...]

LIST = "list"
DICT = "dict"
VALUE = "value"
NULL = "null"

_SHAPE_11: Shape = (1, 1)
_SCALAR: Shape = ()
_NAN = float("nan")

# Interning keeps one object per distinct structure (a model has a few dozen), so comparing
# layouts is mostly identity checks and per-structure data is computed once.
_INTERNED: dict[NodeStruct, NodeStruct] = {}
_SIZES: dict[int, int] = {}
_ITEMS: dict[int, tuple[tuple[str, str | int, int, int, Shape], ...]] = {}


def intern(struct: NodeStruct) -> NodeStruct:
    """Return the canonical object for ``struct``."""
    found = _INTERNED.get(struct)
    if found is None:
        _INTERNED[struct] = found = struct
    return found


def _prod(shape: Shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def struct_items(struct: NodeStruct) -> tuple[tuple[str, str | int, int, int, Shape], ...]:
    """Each entry of a node: ``(field, index or name, start, size, shape)``; start is relative."""
    struct = intern(struct)
    got = _ITEMS.get(id(struct))
    if got is not None:
        return got
    items: list[tuple[str, str | int, int, int, Shape]] = []
    pos = 0
    for key, kind, spec in struct:
        if kind == LIST:
            for i, shape in enumerate(spec):
                n = _prod(shape)
                items.append((key, i, pos, n, shape))
                pos += n
        elif kind == DICT:
            for name, shape in spec:
                n = _prod(shape)
                items.append((key, name, pos, n, shape))
                pos += n
        elif kind == VALUE:
            n = _prod(spec[0])
            items.append((key, 0, pos, n, spec[0]))
            pos += n
    result = tuple(items)
    _ITEMS[id(struct)] = result
    _SIZES[id(struct)] = pos
    return result


def struct_size(struct: NodeStruct) -> int:
    """How many numbers a node of this structure holds."""
    size = _SIZES.get(id(struct))  # ids of interned structures only: they live for good
    if size is None:
        canonical = intern(struct)
        struct_items(canonical)
        size = _SIZES[id(canonical)]
    return size


def field(struct: NodeStruct, key: str) -> Field | None:
    """The field named ``key`` of a structure, if present."""
    for f in struct:
        if f[0] == key:
            return f
    return None


def replace_field(struct: NodeStruct, new: Field) -> NodeStruct:
    """The structure with the field of the same key replaced."""
    return intern(tuple(new if f[0] == new[0] else f for f in struct))


class Layout:
    """Ordered node names and structures of one measurement file, with value offsets."""

    __slots__ = ("_index", "names", "offsets", "structs")

    def __init__(self, names: tuple[str, ...], structs: tuple[NodeStruct, ...]) -> None:
        self.names = names
        self.structs = structs
        get = _SIZES.get
        sizes = np.fromiter(
            [get(id(s)) or struct_size(s) for s in structs], dtype=np.int64, count=len(structs)
        )
        self.offsets = np.zeros(len(structs) + 1, dtype=np.int64)
        np.cumsum(sizes, out=self.offsets[1:])
        self._index: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.names)

    @property
    def size(self) -> int:
        """Total count of numbers."""
        return int(self.offsets[-1])

    def index(self) -> dict[str, int]:
        """Node name to position."""
        if self._index is None:
            self._index = {name: i for i, name in enumerate(self.names)}
        return self._index

    def span(self, i: int) -> tuple[int, int]:
        """Start and stop of node ``i`` in the value vector."""
        return int(self.offsets[i]), int(self.offsets[i + 1])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Layout):
            return NotImplemented
        return self is other or (self.names == other.names and self.structs == other.structs)

    def __hash__(self) -> int:
        return hash((len(self.names), self.names[:1], self.size))


class LayoutBuilder:
    """Build a layout and its value vector node by node (values given as array slices)."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.structs: list[NodeStruct] = []
        self.pieces: list[np.ndarray] = []

    def add(self, name: str, struct: NodeStruct, values: np.ndarray) -> None:
        self.names.append(name)
        self.structs.append(intern(struct))
        self.pieces.append(values)

    def extend(self, layout: Layout, values: np.ndarray, start: int, stop: int) -> None:
        """Copy nodes ``start:stop`` of a layout unchanged."""
        if start >= stop:
            return
        self.names.extend(layout.names[start:stop])
        self.structs.extend(layout.structs[start:stop])
        self.pieces.append(values[layout.offsets[start] : layout.offsets[stop]])

    def build(self) -> tuple[Layout, np.ndarray]:
        layout = Layout(tuple(self.names), tuple(self.structs))
        if self.pieces:
            values = np.concatenate(self.pieces).astype(np.float32, copy=False)
        else:
            values = np.zeros(0, dtype=np.float32)
        return layout, values


# ---------------------------------------------------------------------------------------------
# From parsed documents to layouts


class _Bad(Exception):
    """Internal: a structural problem, reported with the node name by the caller."""


def _json_entry(e: Any, out: list[float]) -> Shape:
    t = type(e)
    if t is list:
        if len(e) == 1:
            e0 = e[0]
            if type(e0) is list and len(e0) == 1 and type(e0[0]) is float:
                out.append(e0[0])
                return _SHAPE_11
        return _json_array(e, out)
    if t is float:
        out.append(e)
        return _SCALAR
    if t is int:
        out.append(float(e))
        return _SCALAR
    if e is None:  # NaN written by an encoder that maps it to null
        out.append(_NAN)
        return _SCALAR
    raise _Bad(f"expected numbers, found {type(e).__name__} {e!r:.40}")


def _json_array(e: list[Any], out: list[float]) -> Shape:
    try:
        arr = np.asarray(e, dtype=np.float64)
    except (ValueError, TypeError) as exc:
        raise _Bad(f"entry is not a rectangular array of numbers ({exc})") from None
    out.extend(arr.ravel().tolist())
    return tuple(int(d) for d in arr.shape)


def _json_node(node: Any, out: list[float]) -> NodeStruct:
    # The common entry [[m]] is handled inline: this loop runs for every node of every rank.
    if type(node) is not dict:
        raise _Bad(f"node is a {type(node).__name__}, expected an object")
    append = out.append
    fields: list[Field] = []
    for key, v in node.items():
        t = type(v)
        if t is list:
            shapes: list[Shape] = []
            for e in v:
                if type(e) is list and len(e) == 1:
                    e0 = e[0]
                    if type(e0) is list and len(e0) == 1:
                        x = e0[0]
                        if type(x) is float:
                            append(x)
                            shapes.append(_SHAPE_11)
                            continue
                shapes.append(_json_entry(e, out))
            fields.append((key, LIST, tuple(shapes)))
        elif t is dict:
            items: list[tuple[str, Shape]] = []
            for k, e in v.items():
                if type(e) is list and len(e) == 1:
                    e0 = e[0]
                    if type(e0) is list and len(e0) == 1:
                        x = e0[0]
                        if type(x) is float:
                            append(x)
                            items.append((k, _SHAPE_11))
                            continue
                items.append((k, _json_entry(e, out)))
            fields.append((key, DICT, tuple(items)))
        elif v is None:
            fields.append((key, NULL, ()))
        else:
            fields.append((key, VALUE, (_json_entry(v, out),)))
    return intern(tuple(fields))


_Plan = tuple[tuple[str, ...], tuple[tuple[str, bool, Any], ...]]
_PLANS: dict[int, _Plan | None] = {}


def _plan(struct: NodeStruct) -> _Plan | None:
    """How to read a node of a known structure whose entries are all ``[[m]]``; None otherwise."""
    plan = _PLANS.get(id(struct), False)
    if plan is not False:
        return plan  # type: ignore[return-value]
    fields: list[tuple[str, bool, Any]] = []
    for key, kind, spec in struct:
        if kind == LIST and all(s == _SHAPE_11 for s in spec):
            fields.append((key, True, len(spec)))
        elif kind == DICT and all(s == _SHAPE_11 for _n, s in spec):
            fields.append((key, False, tuple(n for n, _s in spec)))
        else:
            _PLANS[id(intern(struct))] = None
            return None
    result: _Plan = (tuple(f[0] for f in struct), tuple(fields))
    _PLANS[id(intern(struct))] = result
    return result


def _read_known(node: Any, plan: _Plan, append: Any) -> bool:
    """Append the numbers of ``node`` if it has the planned structure (else False, part-way)."""
    if type(node) is not dict or tuple(node) != plan[0]:
        return False
    for key, is_list, spec in plan[1]:
        v = node[key]
        entries: Iterable[Any]
        if is_list:
            if type(v) is not list or len(v) != spec:
                return False
            entries = v
        else:
            if type(v) is not dict or tuple(v) != spec:
                return False
            entries = v.values()
        for e in entries:
            if type(e) is not list or len(e) != 1:
                return False
            e = e[0]
            if type(e) is not list or len(e) != 1:
                return False
            x = e[0]
            if type(x) is not float:
                return False
            append(x)
    return True


def from_json_nodes(
    nodes: Any, where: str, like: Layout | None = None
) -> tuple[Layout, np.ndarray]:
    """Layout and values of a parsed JSON ``Nodes`` object.

    ``like`` is the layout this file probably shares (another rank of the set): nodes that match it
    are read without rebuilding their structure, the common case made cheaper.
    """
    if not isinstance(nodes, dict):
        raise MeasurementError(where, f"'Nodes' is a {type(nodes).__name__}, expected an object")
    out: list[float] = []
    structs: list[NodeStruct] = []
    guess = (
        like.structs
        if like is not None and len(like) == len(nodes) and tuple(nodes) == like.names
        else None
    )
    append = out.append
    for i, (name, node) in enumerate(nodes.items()):
        if guess is not None:
            plan = _plan(guess[i])
            if plan is not None:
                mark = len(out)
                if _read_known(node, plan, append):
                    structs.append(guess[i])
                    continue
                del out[mark:]
        try:
            structs.append(_json_node(node, out))
        except _Bad as exc:
            raise MeasurementError(where, f"node {name!r}: {exc}") from None
    values = np.array(out, dtype=np.float32)
    return Layout(tuple(nodes) if guess is None else like.names, tuple(structs)), values  # type: ignore[union-attr]


class RawArray(list):  # type: ignore[type-arg]
    """An ndarray as pickled, not built: ``[(version, shape, dtype, fortran, data)]``.

    The NPZ reader unpickles arrays into these (``BUILD`` appends the state, in C), so flattening
    tens of thousands of small arrays is one ``frombuffer`` instead of one ndarray each.
    """

    __slots__ = ()
    __setstate__ = list.append

    def to_numpy(self) -> np.ndarray:
        _version, shape, dtype, fortran, data = self[0]
        dims = tuple(int(d) for d in shape)
        arr: np.ndarray
        if dtype.hasobject:
            arr = np.empty(len(data), dtype=object)
            arr[:] = data
            return arr.reshape(dims)
        arr = np.frombuffer(data, dtype=dtype)
        return arr.reshape(dims, order="F" if fortran and len(dims) > 1 else "C")


class _Chunks:
    """Collects NPZ entries: raw float32 bytes are joined once, anything else is converted."""

    def __init__(self) -> None:
        self.raw: list[Any] = []  # bytes of float32 entries, or float32 arrays
        self.simple = True

    def add_raw(self, data: Any) -> None:
        self.raw.append(data)

    def add_array(self, arr: np.ndarray) -> None:
        self.simple = False
        self.raw.append(np.ascontiguousarray(arr, dtype=np.float32).ravel())

    def values(self) -> np.ndarray:
        if not self.raw:
            return np.zeros(0, dtype=np.float32)
        if self.simple:
            return np.frombuffer(b"".join(self.raw), dtype=np.float32).copy()
        return np.concatenate(
            [
                np.frombuffer(r, dtype=np.float32) if isinstance(r, (bytes, bytearray)) else r
                for r in self.raw
            ]
        )


_F32 = np.dtype(np.float32)


def _npz_entry(e: Any, out: _Chunks) -> Shape:
    if type(e) is RawArray and len(e) == 1 and len(e[0]) == 5:  # straight from the pickle
        _version, shape, dtype, fortran, data = e[0]
        if dtype == _F32 and type(data) is bytes and (not fortran or len(shape) < 2):
            out.add_raw(data)
            return shape if type(shape) is tuple else tuple(shape)
        e = e.to_numpy()
    if isinstance(e, np.ndarray):
        if e.dtype.kind not in "fiub":
            raise _Bad(f"array of dtype {e.dtype}, expected numbers")
        out.add_array(e)
        return tuple(int(d) for d in e.shape)
    if isinstance(e, (float, int, np.floating, np.integer)) and not isinstance(e, bool):
        out.add_array(np.array([e], dtype=np.float32))
        return _SCALAR
    if isinstance(e, (list, tuple)):
        arr = np.asarray(e, dtype=np.float32)
        out.add_array(arr)
        return tuple(int(d) for d in arr.shape)
    raise _Bad(f"expected an array, found {type(e).__name__}")


def _npz_node(node: Any, out: _Chunks) -> NodeStruct:
    if not isinstance(node, dict):
        raise _Bad(f"node is a {type(node).__name__}, expected a dict")
    fields: list[Field] = []
    for key, v in node.items():
        if type(v) is list:
            fields.append((key, LIST, tuple([_npz_entry(e, out) for e in v])))
        elif isinstance(v, dict):
            fields.append((key, DICT, tuple([(k, _npz_entry(e, out)) for k, e in v.items()])))
        elif v is None:
            fields.append((key, NULL, ()))
        elif type(v) is tuple:
            fields.append((key, LIST, tuple([_npz_entry(e, out) for e in v])))
        else:
            fields.append((key, VALUE, (_npz_entry(v, out),)))
    return intern(tuple(fields))


def from_npz_nodes(nodes: Any, where: str) -> tuple[Layout, np.ndarray]:
    """Layout and values of the ``Nodes`` dict loaded from an NPZ file."""
    if not isinstance(nodes, dict):
        raise MeasurementError(where, f"'Nodes' is a {type(nodes).__name__}, expected a dict")
    out = _Chunks()
    structs: list[NodeStruct] = []
    for name, node in nodes.items():
        try:
            structs.append(_npz_node(node, out))
        except (_Bad, ValueError, TypeError) as exc:
            raise MeasurementError(where, f"node {name!r}: {exc}") from None
    return Layout(tuple(str(n) for n in nodes), tuple(structs)), out.values()


# ---------------------------------------------------------------------------------------------
# From layouts back to documents


def _nest(vals: list[float], i: int, shape: Shape) -> Any:
    if len(shape) == 1:
        return vals[i : i + shape[0]]
    step = _prod(shape[1:])
    return [_nest(vals, i + k * step, shape[1:]) for k in range(shape[0])]


def _entry_doc(vals: list[float], i: int, shape: Shape) -> Any:
    if shape == _SHAPE_11:
        return [[vals[i]]]
    if not shape:
        return vals[i]
    if len(shape) == 2 and shape[1] == 1:
        return [[v] for v in vals[i : i + shape[0]]]
    return _nest(vals, i, shape)


def node_doc(struct: NodeStruct, vals: list[float], start: int) -> dict[str, Any]:
    """One node as JSON-ready Python objects (``vals`` is the whole value vector as a list)."""
    doc: dict[str, Any] = {}
    i = start
    for key, kind, spec in struct:
        if kind == LIST:
            entries = []
            for shape in spec:
                entries.append(_entry_doc(vals, i, shape))
                i += _prod(shape)
            doc[key] = entries
        elif kind == DICT:
            named = {}
            for name, shape in spec:
                named[name] = _entry_doc(vals, i, shape)
                i += _prod(shape)
            doc[key] = named
        elif kind == VALUE:
            doc[key] = _entry_doc(vals, i, spec[0])
            i += _prod(spec[0])
        else:
            doc[key] = None
    return doc


def nodes_doc(
    layout: Layout, vals: list[float], start: int = 0, stop: int | None = None
) -> dict[str, Any]:
    """Nodes ``start:stop`` as a JSON-ready dict; ``vals`` is ``values.tolist()``."""
    stop = len(layout) if stop is None else stop
    names = layout.names
    structs = layout.structs
    offsets = layout.offsets[start : stop + 1].tolist()
    return {names[k]: node_doc(structs[k], vals, offsets[k - start]) for k in range(start, stop)}


def _array(values: np.ndarray, i: int, shape: Shape) -> np.ndarray:
    return values[i : i + _prod(shape)].reshape(shape).copy()


def nodes_arrays(layout: Layout, values: np.ndarray) -> dict[str, Any]:
    """Nodes as INC keeps them in the NPZ: float32 ndarrays in the same nesting."""
    out: dict[str, Any] = {}
    for k, (name, struct) in enumerate(zip(layout.names, layout.structs, strict=True)):
        i = int(layout.offsets[k])
        node: dict[str, Any] = {}
        for key, kind, spec in struct:
            if kind == LIST:
                entries = []
                for shape in spec:
                    entries.append(_array(values, i, shape))
                    i += _prod(shape)
                node[key] = entries
            elif kind == DICT:
                named = {}
                for item, shape in spec:
                    named[item] = _array(values, i, shape)
                    i += _prod(shape)
                node[key] = named
            elif kind == VALUE:
                node[key] = _array(values, i, spec[0])
                i += _prod(spec[0])
            else:
                node[key] = None
        out[name] = node
    return out


def describe_struct(struct: NodeStruct) -> str:
    """Short human text for a structure, for error messages."""
    parts = []
    for key, kind, spec in struct:
        if kind == LIST:
            parts.append(f"{key}: {len(spec)} entries {_shapes(spec)}")
        elif kind == DICT:
            parts.append(f"{key}: {{{', '.join(f'{n}: {s}' for n, s in spec)}}}")
        elif kind == VALUE:
            parts.append(f"{key}: {spec[0]}")
        else:
            parts.append(f"{key}: null")
    return "; ".join(parts)


def _shapes(shapes: Iterable[Shape]) -> str:
    seen = list(dict.fromkeys(shapes))
    return "of shape " + ", ".join(str(s) for s in seen[:3]) + (" ..." if len(seen) > 3 else "")
