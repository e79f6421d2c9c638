"""File names, layouts, and the JSON/NPZ encoders against what INC and numpy write and read."""

from __future__ import annotations

import io
import json
import pickle
import pickletools
from pathlib import Path

import numpy as np
import pytest
from inc_sets import PREFIX
from inc_sets import dense_nodes
from inc_sets import ep_nodes
from inc_sets import load_npz
from inc_sets import npz_doc
from inc_sets import scale_nodes
from inc_sets import write_rank

from harness.errors import MeasurementError
from harness.measurements import jsonio
from harness.measurements import npzio
from harness.measurements.layout import nodes_arrays
from harness.measurements.model import Kind
from harness.measurements.model import load_set
from harness.measurements.model import read_file
from harness.measurements.naming import FileName
from harness.measurements.naming import parse_file_name
from harness.measurements.parse import from_json_nodes
from harness.measurements.writer import save_set


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "inc_output_hooks_maxabs_3_8.json",
            FileName("inc_output_hooks_maxabs", None, 3, 8, False, "json"),
        ),
        (
            "inc_output_hooks_maxabs_3_8.npz",
            FileName("inc_output_hooks_maxabs", None, 3, 8, False, "npz"),
        ),
        (
            "inc_output_hooks_maxabs_3_8_mod_list.json",
            FileName("inc_output_hooks_maxabs", None, 3, 8, True),
        ),
        (
            "inc_output_hooks_maxabs_MAXABS_HW_0_2.json",
            FileName("inc_output_hooks_maxabs", "MAXABS_HW", 0, 2),
        ),
        (
            "x_hooks_maxabs_MAXABS_POW2_1_1.npz",
            FileName("x_hooks_maxabs", "MAXABS_POW2", 1, 1, False, "npz"),
        ),
        ("DeepSeek_hooks_maxabs_0_1.json", FileName("DeepSeek_hooks_maxabs", None, 0, 1)),
        ("inc_output_hooks_maxabs.json", None),
        ("inc_output_hooks_maxabs_0.json", None),
        ("notes.txt", None),
    ],
    ids=lambda x: x if isinstance(x, str) else "",
)
def test_file_names_follow_the_rank_rule(name: str, expected: FileName | None) -> None:
    parsed = parse_file_name(name)
    assert parsed == expected
    if parsed is not None:
        assert parsed.name == name
        assert parsed.kind is (Kind.SCALES if parsed.method else Kind.RANGES)


def test_renamed_keeps_prefix_and_method() -> None:
    name = parse_file_name("p_hooks_maxabs_MAXABS_HW_4_8.json")
    assert name is not None
    assert name.renamed(1, 2).name == "p_hooks_maxabs_MAXABS_HW_1_2.json"
    assert name.with_ext("npz").name == "p_hooks_maxabs_MAXABS_HW_4_8.npz"
    assert name.mod_list_file().name == "p_hooks_maxabs_4_8_mod_list.json"


def _docs() -> list[dict]:
    nodes = {**dense_nodes(1), **ep_nodes(2)}
    return [
        {"GlobalRank": None, "LocalRank": 0, "Mode": "DynamicRange", "Nodes": nodes},
        {"GlobalRank": None, "LocalRank": 1, "Mode": "Scale", "Nodes": scale_nodes(nodes)},
        {"NumSamples": 7, "GlobalRank": None, "LocalRank": -1, "Mode": "DynamicRange", "Nodes": {}},
        {
            "GlobalRank": None,
            "LocalRank": 0,
            "Mode": "DynamicRange",
            "Nodes": {
                "a": {"inputs": [], "outputs": None, "params": {}},
                "b": {"inputs": [[[1.0, 2.0], [3.0, 4.0]]]},
            },
        },
    ]


@pytest.mark.parametrize("doc", _docs(), ids=["ranges", "scales", "empty", "odd-shapes"])
def test_json_encoder_writes_the_same_document(doc: dict) -> None:
    layout, values = from_json_nodes(doc["Nodes"], "x")
    header = {k: x for k, x in doc.items() if k != "Nodes"}
    text = jsonio.encode(header, layout, values)
    assert json.loads(text) == doc
    # one node per line
    lines = text.decode().splitlines()
    assert len(lines) == len(header) + len(doc["Nodes"]) + 4 - (1 if not doc["Nodes"] else 0)


def test_json_keeps_nan_and_infinity_as_inc_writes_them() -> None:
    doc = {
        "GlobalRank": None,
        "LocalRank": 0,
        "Mode": "DynamicRange",
        "Nodes": {"a": {"inputs": [[[float("nan")]], [[float("inf")]]]}},
    }
    layout, values = from_json_nodes(doc["Nodes"], "x")
    text = jsonio.encode({"Mode": "DynamicRange"}, layout, values)
    assert b"NaN" in text and b"Infinity" in text
    back = jsonio.decode(text, "x")
    assert np.isnan(back["Nodes"]["a"]["inputs"][0][0][0])


def test_frozen_json_differs_only_at_varying_positions() -> None:
    doc = _docs()[0]
    layout, values = from_json_nodes(doc["Nodes"], "x")
    enc = jsonio.JsonEncoder(layout)
    varying = np.array([1, 4, layout.size - 1])
    frozen = enc.freeze(values, varying)
    other = values.copy()
    other[varying] = [9.5, 8.25, 7.0]
    assert frozen.encode({"LocalRank": 3}, other) == enc.encode({"LocalRank": 3}, other)


def _deep_equal(a: object, b: object) -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b)
        for k in a:
            _deep_equal(a[k], b[k])
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _deep_equal(x, y)
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray)
        assert a.dtype == b.dtype == np.float32 and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    else:
        assert a == b


@pytest.mark.parametrize("doc", _docs(), ids=["ranges", "scales", "empty", "odd-shapes"])
def test_npz_encoder_loads_like_np_savez(tmp_path: Path, doc: dict) -> None:
    layout, values = from_json_nodes(doc["Nodes"], "x")
    header = {k: x for k, x in doc.items() if k != "Nodes"}
    ours = tmp_path / "ours.npz"
    npzio.NpzEncoder(layout).write(ours, header, values)
    ref = tmp_path / "ref.npz"
    np.savez(ref, npz_doc(doc))
    assert np.load(ours, allow_pickle=True).files == ["arr_0"]
    _deep_equal(load_npz(ours), load_npz(ref))
    # and our reader agrees with numpy's
    back = npzio.read(ours)
    assert from_json_nodes(doc["Nodes"], "x")[0] == from_json_nodes(doc["Nodes"], "x")[0]
    assert list(back) == list(doc)


def test_npz_reader_refuses_foreign_objects(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("boom",))

    holder = np.empty((), dtype=object)
    holder[()] = {"Nodes": {"a": {"inputs": [Evil()]}}}
    path = tmp_path / "evil_hooks_maxabs_0_1.npz"
    np.savez(path, holder)
    with pytest.raises(MeasurementError, match="refusing to load builtins.print"):
        npzio.read(path)


def test_read_file_reads_npz_and_json_alike(tmp_path: Path) -> None:
    path = write_rank(tmp_path, 0, 1, ep_nodes(0))
    a = read_file(path)
    b = read_file(path.with_suffix(".npz"))
    assert a.layout == b.layout
    np.testing.assert_array_equal(a.values, b.values)
    assert a.header == b.header
    assert a.node("model.layers.1.mlp.experts.moe_op")["outputs"][0] == [
        [a.values[a.layout.span(1)[0] + 1]]
    ]
    assert a.to_doc() == json.loads(path.read_text())


def test_reference_style_npz_with_float64_arrays_reads(tmp_path: Path) -> None:
    doc = {"GlobalRank": None, "LocalRank": 0, "Mode": "DynamicRange", "Nodes": dense_nodes(0)}
    nodes = {
        n: {
            k: (
                [np.array(e) for e in x]
                if isinstance(x, list)
                else {p: np.array(w) for p, w in x.items()}
            )
            for k, x in node.items()
        }
        for n, node in doc["Nodes"].items()
    }
    path = tmp_path / f"{PREFIX}_0_1.npz"
    np.savez(path, {**doc, "Nodes": nodes})
    f = read_file(path)
    ref = from_json_nodes(doc["Nodes"], "x")
    assert f.layout == ref[0]
    np.testing.assert_array_equal(f.values, ref[1])


def test_nodes_arrays_matches_inc_npz_nesting() -> None:
    doc = _docs()[1]
    layout, values = from_json_nodes(doc["Nodes"], "x")
    _deep_equal(nodes_arrays(layout, values), npz_doc(doc)["Nodes"])


def test_header_fragments_pickle_without_memo_slots() -> None:
    frag = npzio._fragment({"a": [1, "x"]})
    ops = {op.name for op, _arg, _pos in pickletools.genops(b"\x80\x03" + frag + b".")}
    assert not ops & {"BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE", "BINGET", "LONG_BINGET", "GET"}
    assert pickle.loads(b"\x80\x03" + frag + b".") == {"a": [1, "x"]}


def test_load_set_reads_a_directory_a_file_or_a_dump_stats_path(make_set) -> None:
    d = make_set(world=2, scales=True)
    s = load_set(d)
    assert (s.world, s.ranks, s.kind, s.prefix) == (2, [0, 1], Kind.RANGES, PREFIX)
    assert set(s.mod_lists) == {0, 1}
    assert load_set(d, kind="scales").method == "MAXABS_HW"
    assert load_set(d / f"{PREFIX}_MAXABS_HW_1_2.json").kind is Kind.SCALES
    assert load_set(d / "inc_output").prefix == PREFIX


def test_save_set_writes_what_load_set_reads(make_set, tmp_path: Path) -> None:
    d = make_set(world=2, nodes_fn=ep_nodes)
    s = load_set(d)
    written = save_set(s, tmp_path / "copy")
    assert sorted(written) == sorted(p.name for p in d.iterdir())
    again = load_set(tmp_path / "copy")
    assert again.mod_lists == s.mod_lists
    for a, b in zip(s.files, again.files, strict=True):
        assert a.header == b.header and a.layout == b.layout
        np.testing.assert_array_equal(a.values, b.values)
        _deep_equal(
            load_npz(d / a.name.with_ext("npz").name),
            load_npz(tmp_path / "copy" / b.name.with_ext("npz").name),
        )


def test_load_set_falls_back_to_npz_when_json_is_missing(make_set) -> None:
    d = make_set(world=2)
    (d / f"{PREFIX}_1_2.json").unlink()
    s = load_set(d)
    assert s.files[1].path.suffix == ".npz"


def test_json_decode_names_the_file_and_position() -> None:
    with pytest.raises(MeasurementError, match=r"f\.json: unparsable JSON: .*line 1 column"):
        jsonio.decode(b'{"Nodes": [1, }', "f.json")


def test_stdlib_fallbacks_write_the_same_text(monkeypatch: pytest.MonkeyPatch) -> None:
    doc = _docs()[0]
    layout, values = from_json_nodes(doc["Nodes"], "x")
    fast = jsonio.encode({"Mode": "x"}, layout, values)
    monkeypatch.setattr(jsonio, "_orjson", None)
    slow = jsonio.encode({"Mode": "x"}, layout, values)
    assert json.loads(slow) == json.loads(fast)
    assert io.BytesIO(slow).read().count(b"\n") == fast.count(b"\n")
