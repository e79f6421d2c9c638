"""NPZ files exactly as INC reads them.

INC saves ``np.savez(path, doc)``: a zip with one member ``arr_0.npy``, a 0-d object array
holding the document dict (``GlobalRank``, ``LocalRank``, ``Mode``, ``Nodes``) whose numbers are
float32 ndarrays; it loads them with ``np.load(path, allow_pickle=True)["arr_0"].item()``.

Pickling ~30k small arrays costs ~4 us each through the standard pickler, the bulk of writing a
unified set and, for expand, N times over. :class:`NpzEncoder` writes the same stream (pickle
protocol 3, the opcodes numpy's own reduction produces: ``_reconstruct`` + ``BUILD`` with
``(1, shape, dtype, False, data)``) from a per-layout skeleton in which only the numbers
differ between files, so a file costs one copy and one vectorised scatter. ``np.load`` gives
back the same dict, with the same float32 arrays, as for ``np.savez``; tests check this.
"""

from __future__ import annotations

import functools
import io
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from struct import Struct
from typing import Any
from typing import cast

import numpy as np

from harness.errors import MeasurementError
from harness.measurements.layout import DICT
from harness.measurements.layout import LIST
from harness.measurements.layout import NULL
from harness.measurements.layout import Layout
from harness.measurements.layout import NodeStruct
from harness.measurements.layout import Shape
from harness.measurements.parse import RawArray

MEMBER = "arr_0.npy"


def _raw_array(*_args: Any) -> RawArray:
    return RawArray()


class _Unpickler(pickle.Unpickler):
    """Only numpy arrays, dtypes and scalars: a measurement file has no business importing more."""

    _ALLOWED = frozenset(
        {
            ("numpy", "dtype"),
            ("numpy", "ndarray"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("builtins", "slice"),
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _raw_array
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name} (not part of a measurement file)"
        )


def read(path: Path) -> dict[str, Any]:
    """Load the document dict of an NPZ measurement file; arrays come back as :class:`RawArray`."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if names != [MEMBER]:
                raise MeasurementError(
                    path, f"NPZ holds {names}, expected the single member {MEMBER}"
                )
            with zf.open(MEMBER) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    _shape, _fortran, dtype = np.lib.format.read_array_header_1_0(f)
                else:
                    _shape, _fortran, dtype = np.lib.format.read_array_header_2_0(f)
                if not dtype.hasobject:
                    raise MeasurementError(
                        path, f"NPZ arr_0 is a {dtype} array, expected a pickled dict"
                    )
                holder = _Unpickler(f).load()
    except MeasurementError:
        raise
    except Exception as exc:  # zip, pickle and format errors all mean the same to the user
        raise MeasurementError(path, f"unreadable NPZ ({type(exc).__name__}: {exc})") from None
    doc = holder.to_numpy().item() if isinstance(holder, RawArray) else holder
    if not isinstance(doc, dict):
        raise MeasurementError(path, f"NPZ arr_0 holds a {type(doc).__name__}, expected a dict")
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in doc.items()}


# ---------------------------------------------------------------------------------------------
# Fast encoder

_SHARED_KEYS = ("inputs", "outputs", "params", "weight")


@dataclass(frozen=True)
class _Shared:
    prefix: bytes  # PROTO, the memoised shared objects (popped), the 0-d array opening
    suffix: bytes  # closing of the 0-d object array and STOP
    array_head: bytes  # _reconstruct(ndarray, (0,), b'b') REDUCE MARK 1
    f4: bytes  # GET of the float32 dtype
    keys: dict[str, bytes]  # GET of the common key strings
    npy_header: bytes


def _get(i: int) -> bytes:
    if i < 256:
        return b"h" + bytes([i])
    return b"j" + i.to_bytes(4, "little")


@functools.cache
def _shared() -> _Shared:
    sample = np.zeros((1, 1), dtype=np.float32)
    reduced = cast(tuple[Any, tuple[Any, Any, Any], Any], sample.__reduce_ex__(3))
    func, (cls, zero, bb), _state = reduced
    f4 = np.dtype(np.float32)
    obj = np.dtype(object)
    objects = [func, cls, zero, bb, f4, obj, *_SHARED_KEYS]
    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, protocol=3)
    pickler.dump(objects)
    memo = {oid: idx for oid, (idx, _o) in pickler.memo.copy().items()}
    raw = buf.getvalue()
    assert raw[:2] == b"\x80\x03" and raw[-1:] == b"."

    def get(o: object) -> bytes:
        return _get(memo[id(o)])

    array_head = get(func) + get(cls) + get(zero) + get(bb) + b"\x87R(K\x01"
    # the 0-d object array: state (1, (), dtype('O'), False, [doc])
    opening = array_head + b")" + get(obj) + b"\x89]"
    header = io.BytesIO()
    holder = np.empty((), dtype=object)
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(holder))
    return _Shared(
        prefix=raw[:-1] + b"0" + opening,
        suffix=b"atb.",
        array_head=array_head,
        f4=get(f4),
        keys={k: get(k) for k in _SHARED_KEYS},
        npy_header=header.getvalue(),
    )


def _int(n: int) -> bytes:
    if 0 <= n < 256:
        return b"K" + bytes([n])
    if 0 <= n < 65536:
        return b"M" + n.to_bytes(2, "little")
    return b"J" + n.to_bytes(4, "little", signed=True)


def _tuple(shape: Shape) -> bytes:
    body = b"".join(_int(d) for d in shape)
    if len(shape) == 0:
        return b")"
    if len(shape) <= 3:
        return body + (b"\x85", b"\x86", b"\x87")[len(shape) - 1]
    return b"(" + body + b"t"


def _str(s: str) -> bytes:
    raw = s.encode("utf-8", "surrogatepass")
    return b"X" + len(raw).to_bytes(4, "little") + raw


_U32 = Struct("<I").pack


def _utf8(names: tuple[str, ...]) -> list[bytes]:
    """UTF-8 of every name, encoded in one call when no name holds a NUL."""
    if not names:
        return []
    parts = "\x00".join(names).encode("utf-8", "surrogatepass").split(b"\x00")
    if len(parts) != len(names):  # pragma: no cover - a NUL inside a module name
        return [n.encode("utf-8", "surrogatepass") for n in names]
    return parts


def _fragment(obj: Any) -> bytes:
    """Pickle opcodes for a small object without memo entries (so it can sit anywhere)."""
    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, protocol=3)
    pickler.fast = True  # no memo: the fragment neither defines nor uses memo slots
    pickler.dump(obj)
    return buf.getvalue()[2:-1]


class _Template:
    """Opcodes of one node structure with holes for the numbers."""

    __slots__ = ("data", "rel", "struct")

    def __init__(self, struct: NodeStruct, shared: _Shared) -> None:
        self.struct = struct
        parts: list[bytes] = []
        holes: list[np.ndarray] = []
        pos = 0

        def emit(b: bytes) -> None:
            nonlocal pos
            parts.append(b)
            pos += len(b)

        def key(k: str) -> bytes:
            return shared.keys.get(k) or _str(k)

        def array(shape: Shape) -> None:
            n = 1
            for d in shape:
                n *= d
            nbytes = 4 * n
            op = b"C" + bytes([nbytes]) if nbytes < 256 else b"B" + nbytes.to_bytes(4, "little")
            emit(shared.array_head + _tuple(shape) + shared.f4 + b"\x89" + op)
            holes.append(np.arange(pos, pos + nbytes, dtype=np.int64))
            emit(b"\x00" * nbytes + b"tb")

        emit(b"}")
        if struct:
            emit(b"(")
            for k, kind, spec in struct:
                emit(key(k))
                if kind == LIST:
                    emit(b"]")
                    if spec:
                        emit(b"(")
                        for shape in spec:
                            array(shape)
                        emit(b"e")
                elif kind == DICT:
                    emit(b"}")
                    if spec:
                        emit(b"(")
                        for name, shape in spec:
                            emit(key(name))
                            array(shape)
                        emit(b"u")
                elif kind == NULL:
                    emit(b"N")
                else:
                    array(spec[0])
            emit(b"u")
        self.data = b"".join(parts)
        self.rel = np.concatenate(holes) if holes else np.zeros(0, dtype=np.int64)


class NpzEncoder:
    """Write NPZ files of one layout: the pickle skeleton built once, numbers scattered in."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        shared = _shared()
        codes: dict[int, int] = {}
        templates: list[_Template] = []
        for struct in layout.structs:
            if id(struct) not in codes:
                codes[id(struct)] = len(templates)
                templates.append(_Template(struct, shared))
        code_list = [codes[id(s)] for s in layout.structs]
        code = np.array(code_list, dtype=np.int64)
        names = _utf8(layout.names)
        lengths = list(map(len, names))
        bodies = [templates[c].data for c in code_list]
        n = len(names)
        joined: list[bytes] = [b""] * (4 * n)
        joined[0::4] = [b"X"] * n  # BINUNICODE <length> <utf-8>: the node name
        joined[1::4] = list(map(_U32, lengths))
        joined[2::4] = names
        joined[3::4] = bodies
        self.skeleton = b"".join(joined)
        head_len = np.array(lengths, dtype=np.int64) + 5
        body_len = np.fromiter(map(len, bodies), dtype=np.int64, count=n)
        bases = np.cumsum(head_len + body_len) - body_len  # where each node's template starts
        # dst[j] is the stream position of byte j of the float32 value vector
        self.dst = np.zeros(4 * layout.size, dtype=np.int64)
        starts = layout.offsets[:-1] * 4
        for c, t in enumerate(templates):
            if not t.rel.size:
                continue
            idx = np.flatnonzero(code == c)
            dst = bases[idx][:, None] + t.rel[None, :]
            src = starts[idx][:, None] + np.arange(t.rel.size, dtype=np.int64)[None, :]
            self.dst[src.ravel()] = dst.ravel()

    def stream(self, header: dict[str, Any], values: np.ndarray) -> list[bytes | bytearray]:
        """The ``arr_0.npy`` member as a list of byte chunks."""
        shared = _shared()
        if values.shape != (self.layout.size,):
            raise ValueError(f"{values.shape[0]} values for a layout of {self.layout.size}")
        body = bytearray(self.skeleton)
        vbytes = np.ascontiguousarray(values, dtype=np.float32).view(np.uint8)
        np.frombuffer(body, dtype=np.uint8)[self.dst] = vbytes
        head = [b"}("]
        for k, v in header.items():
            head.append(_str(k))
            head.append(_fragment(v))
        head.append(_str("Nodes"))
        head.append(b"}(")
        return [shared.npy_header, shared.prefix, b"".join(head), body, b"uu", shared.suffix]

    def write(self, path: Path, header: dict[str, Any], values: np.ndarray) -> None:
        """Write one NPZ file."""
        write_chunks(path, self.stream(header, values))


def has_stream(path: Path, chunks: list[bytes | bytearray]) -> bool:
    """Whether the NPZ at ``path`` holds exactly this ``arr_0.npy`` (a cheap equality test)."""
    try:
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo(MEMBER)
            if info.file_size != sum(len(c) for c in chunks):
                return False
            return zf.read(MEMBER) == b"".join(chunks)
    except (OSError, KeyError, zipfile.BadZipFile):
        return False


def write_chunks(path: Path, chunks: list[bytes | bytearray]) -> None:
    """Write an NPZ whose ``arr_0.npy`` member is ``chunks`` (zip stored, like ``np.savez``)."""
    with (
        zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf,
        zf.open(MEMBER, "w", force_zip64=True) as member,
    ):
        for chunk in chunks:
            member.write(chunk)
