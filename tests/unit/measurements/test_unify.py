"""unify: the public step-5 semantics, checked against an independent dict-based oracle."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from inc_sets import PREFIX
from inc_sets import dense_nodes
from inc_sets import ep_nodes
from inc_sets import load_doc
from inc_sets import load_npz
from inc_sets import write_rank

from harness.errors import MeasurementError
from harness.measurements import unify
from harness.measurements.unify import parse_groups
from harness.measurements.unify import plan_groups

_EXPERT = re.compile(r"^(.*\.(?:w13_list|w2_list))\.(\d+)$")


def _emax(a: Any, b: Any) -> Any:
    """Element-wise max of two nested lists (or numbers)."""
    if isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b)
        return [_emax(x, y) for x, y in zip(a, b, strict=True)]
    return max(a, b)


def oracle(docs: list[dict], group: list[int], ep: bool, scales: bool) -> dict[str, Any]:
    """The rules of DESIGN.md, written plainly."""
    first = docs[group[0]]["Nodes"]
    nodes = copy.deepcopy(first)
    e_local = 1 + max(
        (int(m[2]) for n in first if (m := _EXPERT.match(n)) and "moe" in n), default=-1
    )
    appended: dict[str, Any] = {}
    for name in first:
        if ep and _EXPERT.match(name) and "moe" in name:
            prefix, idx = _EXPERT.match(name).groups()  # type: ignore[union-attr]
            for k, r in enumerate(group[1:], start=1):
                appended[f"{prefix}.{k * e_local + int(idx)}"] = docs[r]["Nodes"][name]
            continue
        is_op = ep and "moe" in name and ".w13_list" not in name and ".w2_list" not in name
        per_key = "inputs" if scales else "outputs"
        node = nodes[name]
        for r in group[1:]:
            other = docs[r]["Nodes"][name]
            for key in node:
                if key == per_key and is_op:
                    node[key][0] = _emax(node[key][0], other[key][0])
                elif key == "params":
                    node[key] = {p: _emax(w, other[key][p]) for p, w in node[key].items()}
                else:
                    node[key] = _emax(node[key], other[key])
        if is_op and per_key in node:
            node[per_key] = [node[per_key][0]] + [
                e for r in group for e in docs[r]["Nodes"][name][per_key][1:]
            ]
    nodes.update(appended)
    return nodes


def _docs(d: Path, world: int, method: str | None = None) -> list[dict]:
    stem = f"{PREFIX}_{method}" if method else PREFIX
    return [load_doc(d / f"{stem}_{r}_{world}.json") for r in range(world)]


@pytest.mark.parametrize("ranks", [1, 2])
def test_plain_unify_is_the_elementwise_max_of_each_group(
    make_set, tmp_path: Path, ranks: int
) -> None:
    src = make_set(world=4, scales=True)
    out = tmp_path / "out"
    result = unify(src, out, ranks=ranks)
    docs = _docs(src, 4)
    size = 4 // ranks
    for g in range(ranks):
        got = load_doc(out / f"{PREFIX}_{g}_{ranks}.json")
        assert got["LocalRank"] == (g if ranks > 1 else -1)
        assert got["GlobalRank"] is None
        assert got["Nodes"] == oracle(
            docs, list(range(g * size, (g + 1) * size)), ep=False, scales=False
        )
        sdocs = _docs(src, 4, "MAXABS_HW")
        scales = load_doc(out / f"{PREFIX}_MAXABS_HW_{g}_{ranks}.json")
        assert scales["Mode"] == "Scale"
        assert scales["Nodes"] == oracle(
            sdocs, list(range(g * size, (g + 1) * size)), ep=False, scales=True
        )
    assert f"{PREFIX}_0_{ranks}_mod_list.json" in result.files


def test_per_channel_entries_take_the_elementwise_max(make_set, tmp_path: Path) -> None:
    def nodes(rank: int) -> dict:
        return {"lin": {"inputs": [[[1.0]]], "params": {"weight": [[3.0 - rank], [1.0 + rank]]}}}

    src = make_set(world=2, nodes_fn=nodes, scales=True)
    unify(src, tmp_path / "o", ranks=1)
    assert load_doc(tmp_path / "o" / f"{PREFIX}_0_1.json")["Nodes"]["lin"]["params"]["weight"] == [
        [3.0],
        [2.0],
    ]
    # scale files: element-wise (the public script's list max() would keep [0.125, 0.125] of rank 0 or 1 whole)
    got = load_doc(tmp_path / "o" / f"{PREFIX}_MAXABS_HW_0_1.json")["Nodes"]["lin"]["params"][
        "weight"
    ]
    assert got == [1.0, 1.0]


def test_scale_list_max_is_elementwise_not_lexicographic(tmp_path: Path) -> None:
    src = tmp_path / "s"
    for rank, w in enumerate(([2.0, 1.0], [1.0, 4.0])):
        write_rank(src, rank, 2, {"lin": {"inputs": [[[1.0]]], "params": {"weight": [[1.0]]}}})
        write_rank(
            src,
            rank,
            2,
            {"lin": {"inputs": [0.5], "outputs": [0.5], "params": {"weight": w}}},
            method="MAXABS_HW",
        )
    unify(src, tmp_path / "o", ranks=1)
    got = load_doc(tmp_path / "o" / f"{PREFIX}_MAXABS_HW_0_1.json")["Nodes"]["lin"]["params"][
        "weight"
    ]
    assert got == [2.0, 4.0]  # python's max([2, 1], [1, 4]) would give [2.0, 1.0]


@pytest.mark.parametrize("ranks", [1, 2])
def test_expert_parallel_unify_gathers_experts(make_set, tmp_path: Path, ranks: int) -> None:
    src = make_set(world=4, nodes_fn=ep_nodes, scales=True)
    out = tmp_path / "out"
    unify(src, out, ranks=ranks, expert_parallel=True)
    docs, sdocs = _docs(src, 4), _docs(src, 4, "MAXABS_HW")
    size = 4 // ranks
    for g in range(ranks):
        group = list(range(g * size, (g + 1) * size))
        got = load_doc(out / f"{PREFIX}_{g}_{ranks}.json")["Nodes"]
        want = oracle(docs, group, ep=True, scales=False)
        assert list(got) == list(
            want
        )  # the public tool's order: new experts after the existing nodes
        assert got == want
        op = got["model.layers.1.mlp.experts.moe_op"]
        assert len(op["outputs"]) == 1 + 2 * size
        expert = got[f"model.layers.2.mlp.experts.moe_op.w13_list.{2 * (size - 1) + 1}"]
        assert expert == docs[group[-1]]["Nodes"]["model.layers.2.mlp.experts.moe_op.w13_list.1"]
        sgot = load_doc(out / f"{PREFIX}_MAXABS_HW_{g}_{ranks}.json")["Nodes"]
        assert sgot == oracle(sdocs, group, ep=True, scales=True)
        assert len(sgot["model.layers.1.mlp.experts.moe_op"]["inputs"]) == 1 + 2 * size


def test_expert_parallel_mod_list_names_every_expert(make_set, tmp_path: Path) -> None:
    src = make_set(world=4, nodes_fn=ep_nodes)
    unify(src, tmp_path / "o", ranks=1, expert_parallel=True, skip_scales=True)
    names = json.loads((tmp_path / "o" / f"{PREFIX}_0_1_mod_list.json").read_text())
    nodes = load_doc(tmp_path / "o" / f"{PREFIX}_0_1.json")["Nodes"]
    assert set(nodes) <= set(names)
    assert "model.layers.1.mlp.experts.moe_op.w2_list.7" in names
    assert "model.unmeasured.softmax" in names  # names without measurement stay listed


def test_npz_holds_the_json_values_as_float32(make_set, tmp_path: Path) -> None:
    src = make_set(world=2, nodes_fn=ep_nodes)
    unify(src, tmp_path / "o", ranks=1, expert_parallel=True)
    doc = load_doc(tmp_path / "o" / f"{PREFIX}_0_1.json")
    npz = load_npz(tmp_path / "o" / f"{PREFIX}_0_1.npz")
    assert {k: v for k, v in npz.items() if k != "Nodes"} == {
        "GlobalRank": None,
        "LocalRank": -1,
        "Mode": "DynamicRange",
    }
    assert list(npz["Nodes"]) == list(doc["Nodes"])
    for name, node in doc["Nodes"].items():
        for key in node:
            if key == "params":
                for p, w in node[key].items():
                    arr = npz["Nodes"][name][key][p]
                    assert arr.dtype == np.float32
                    np.testing.assert_array_equal(arr, np.array(w, dtype=np.float32))
            else:
                for x, arr in zip(node[key], npz["Nodes"][name][key], strict=True):
                    assert arr.dtype == np.float32 and arr.shape == np.array(x).shape
                    np.testing.assert_array_equal(arr, np.array(x, dtype=np.float32))


def test_card_groups_equal_to_rank_groups_give_identical_files(make_set, tmp_path: Path) -> None:
    src = make_set(world=4, nodes_fn=ep_nodes, scales=True)
    unify(src, tmp_path / "r", ranks=2, expert_parallel=True)
    unify(src, tmp_path / "g", groups="0,1--2,3", expert_parallel=True)
    names = sorted(p.name for p in (tmp_path / "r").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "g").iterdir())
    for n in names:
        if n.endswith(".json"):
            assert (tmp_path / "r" / n).read_bytes() == (tmp_path / "g" / n).read_bytes(), n
        else:
            assert np.load(tmp_path / "r" / n, allow_pickle=True)["arr_0"].item().keys()


def test_card_groups_need_not_be_consecutive(make_set, tmp_path: Path) -> None:
    src = make_set(world=4)
    unify(src, tmp_path / "g", groups=[[0, 2], [1, 3]])
    docs = _docs(src, 4)
    assert load_doc(tmp_path / "g" / f"{PREFIX}_1_2.json")["Nodes"] == oracle(
        docs, [1, 3], ep=False, scales=False
    )


def test_skip_scales_leaves_scale_files_out(make_set, tmp_path: Path) -> None:
    src = make_set(world=2, scales=True)
    result = unify(src, tmp_path / "o", ranks=1, skip_scales=True)
    assert not any("MAXABS" in f for f in result.files)
    assert "scale files skipped (-s)" in result.notes


def test_in_place_unify_keeps_the_old_set_beside_the_new(make_set) -> None:
    src = make_set(world=4)
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    unify(src, src, ranks=2)
    after = {p.name: p.read_bytes() for p in src.iterdir()}
    assert {n: after[n] for n in before} == before
    assert {f"{PREFIX}_0_2.json", f"{PREFIX}_1_2.npz", f"{PREFIX}_1_2_mod_list.json"} <= set(after)
    # a second in-place unify needs to be told which set to start from
    with pytest.raises(
        MeasurementError, match=r"several world sizes \(world 2: ranks 0-1; world 4: ranks 0-3\)"
    ):
        unify(src, src, ranks=1)
    unify(src, src, ranks=1, world=4)
    assert (src / f"{PREFIX}_0_1.json").exists()


def test_expert_parallel_flag_on_a_dense_model_is_a_plain_max(make_set, tmp_path: Path) -> None:
    src = make_set(world=2)
    result = unify(src, tmp_path / "o", ranks=1, expert_parallel=True)
    assert load_doc(tmp_path / "o" / f"{PREFIX}_0_1.json")["Nodes"] == oracle(
        _docs(src, 2), [0, 1], False, False
    )
    assert any("no MoE experts" in n for n in result.notes)


def test_node_order_may_differ_between_ranks(tmp_path: Path) -> None:
    src = tmp_path / "s"
    a = dense_nodes(0)
    b = dict(reversed(list(dense_nodes(1).items())))
    write_rank(src, 0, 2, a)
    write_rank(src, 1, 2, b)
    unify(src, tmp_path / "o", ranks=1)
    docs = [load_doc(src / f"{PREFIX}_0_2.json"), {"Nodes": dense_nodes(1)}]
    assert load_doc(tmp_path / "o" / f"{PREFIX}_0_1.json")["Nodes"] == oracle(
        docs, [0, 1], False, False
    )


# ---------------------------------------------------------------------------------------------
# Bad input: one clear message naming the file and the problem


@pytest.mark.parametrize(
    ("ranks", "groups", "match"),
    [
        (3, None, r"-r 3 does not divide the world size 4; use one of 1, 2"),
        (4, None, r"-r 4 is not below the world size 4"),
        (8, None, r"-r 8 is not below the world size 4"),
        (0, None, r"at least 1"),
        (None, None, r"exactly one of ranks \(-r\) or card groups \(-g\)"),
        (2, "0,1--2,3", r"exactly one of"),
        (None, "0,1--2", r"leave out ranks 3"),
        (None, "0,1--1,2,3", r"rank 1 appears in more than one card group"),
        (None, "0,1--2,7", r"rank 7 is not in 0..3"),
        (None, "0,a--2,3", r"numbers separated by"),
        (None, "0--1--2--3", r"4 card groups for world size 4: nothing to unify"),
    ],
    ids=[
        "r-not-dividing",
        "r-equal",
        "r-above",
        "r-zero",
        "neither",
        "both",
        "missing-rank",
        "duplicate",
        "outside",
        "not-a-number",
        "one-per-group",
    ],
)
def test_impossible_groupings_are_refused(make_set, tmp_path: Path, ranks, groups, match) -> None:
    src = make_set(world=4)
    with pytest.raises(MeasurementError, match=match) as info:
        unify(src, tmp_path / "o", ranks=ranks, groups=groups)
    assert info.value.path == str(src)
    assert not (tmp_path / "o").exists()


def test_unparsable_json_names_the_file(make_set, tmp_path: Path) -> None:
    src = make_set(world=2)
    bad = src / f"{PREFIX}_1_2.json"
    bad.write_text('{"GlobalRank": null, "Nodes": {"a": ')
    with pytest.raises(MeasurementError, match="unparsable JSON") as info:
        unify(src, tmp_path / "o", ranks=1)
    assert info.value.path == str(bad)
    assert not (tmp_path / "o").exists()


def test_file_name_without_rank_suffix_is_refused(make_set, tmp_path: Path) -> None:
    src = make_set(world=2)
    (src / f"{PREFIX}.json").write_text("{}")
    with pytest.raises(
        MeasurementError, match=r"does not follow the rank rule .*WORLD_SIZE/LOCAL_RANK"
    ) as info:
        unify(src, tmp_path / "o", ranks=1)
    assert info.value.path.endswith(f"{PREFIX}.json")


def test_missing_ranks_are_named(make_set, tmp_path: Path) -> None:
    src = make_set(world=4)
    for ext in ("json", "npz"):
        (src / f"{PREFIX}_2_4.{ext}").unlink()
    with pytest.raises(MeasurementError, match=r"missing ranks 2 of world 4 \(found 3 of 4"):
        unify(src, tmp_path / "o", ranks=2)


def test_mixed_prefixes_are_refused(make_set, tmp_path: Path) -> None:
    src = make_set(world=2)
    write_rank(src, 0, 2, dense_nodes(0), prefix="other_hooks_maxabs")
    with pytest.raises(
        MeasurementError,
        match=r"mixed prefixes in one directory: inc_output_hooks_maxabs \(\d+ files\), other",
    ):
        unify(src, tmp_path / "o", ranks=1)
    # choosing one works
    unify(src, tmp_path / "o", ranks=1, prefix=PREFIX)


def test_ranks_with_different_nodes_are_refused(tmp_path: Path) -> None:
    src = tmp_path / "s"
    write_rank(src, 0, 2, dense_nodes(0))
    nodes = dense_nodes(1)
    nodes.pop("model.layers.1.mlp.down_proj")
    write_rank(src, 1, 2, nodes)
    with pytest.raises(
        MeasurementError, match=r"rank 1 lacks node 'model.layers.1.mlp.down_proj' of rank 0"
    ):
        unify(src, tmp_path / "o", ranks=1)


def test_ranks_with_different_shapes_are_refused(tmp_path: Path) -> None:
    src = tmp_path / "s"
    write_rank(src, 0, 2, dense_nodes(0, channels=3))
    write_rank(src, 1, 2, dense_nodes(1, channels=4))
    with pytest.raises(
        MeasurementError, match=r"node 'model.layers.0.mlp.down_proj' differs from rank 0"
    ):
        unify(src, tmp_path / "o", ranks=1)


def test_mode_contradicting_the_name_is_refused(make_set, tmp_path: Path) -> None:
    src = make_set(world=2)
    path = src / f"{PREFIX}_1_2.json"
    doc = load_doc(path)
    doc["Mode"] = "Scale"
    path.write_text(json.dumps(doc))
    with pytest.raises(MeasurementError, match="the name says range file but Mode is 'Scale'"):
        unify(src, tmp_path / "o", ranks=1)


def test_expert_parallel_unify_of_an_expanded_set_is_refused(make_set, tmp_path: Path) -> None:
    src = make_set(world=2, nodes_fn=ep_nodes)
    unify(src, tmp_path / "u", ranks=1, expert_parallel=True)
    from harness.measurements import expand

    expand(tmp_path / "u", tmp_path / "e", 2)
    with pytest.raises(
        MeasurementError, match=r"each rank already holds all experts \(an expanded set\?\)"
    ):
        unify(tmp_path / "e", tmp_path / "o", ranks=1, expert_parallel=True)


def test_parse_groups_reads_the_public_format() -> None:
    assert parse_groups(" 0,1--2,3-- ") == [[0, 1], [2, 3]]
    assert plan_groups(8, 2, None, Path("x")) == [[0, 1, 2, 3], [4, 5, 6, 7]]
