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
