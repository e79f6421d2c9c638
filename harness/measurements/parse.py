"""From parsed documents (JSON objects, unpickled NPZ dicts) to a layout and a value vector.

Parsing is most of a unify's time: the ranks of a set share one layout, so every rank after the
first is read against the first's layout (:func:`from_json_nodes` ``like=``), which skips
rebuilding the structure of each node.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from harness.errors import MeasurementError
from harness.measurements.layout import DICT
from harness.measurements.layout import LIST
from harness.measurements.layout import NULL
from harness.measurements.layout import VALUE
from harness.measurements.layout import Field
from harness.measurements.layout import Layout
from harness.measurements.layout import NodeStruct
from harness.measurements.layout import Shape
from harness.measurements.layout import intern

_SHAPE_11: Shape = (1, 1)
_SCALAR: Shape = ()
_NAN = float("nan")


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
