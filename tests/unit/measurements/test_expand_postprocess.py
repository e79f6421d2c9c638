"""expand (public step-6) and postprocess (public step-3) semantics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from inc_sets import PREFIX
from inc_sets import dense_nodes
from inc_sets import ep_nodes
from inc_sets import load_doc
from inc_sets import load_npz
from inc_sets import scale_nodes
from inc_sets import write_rank

from harness.errors import MeasurementError
from harness.measurements import expand
from harness.measurements import postprocess
from harness.measurements import unify

OP = "model.layers.1.mlp.experts.moe_op"


@pytest.fixture
def unified(make_set, tmp_path: Path) -> Path:
    """A 4-rank EP set (2 local experts) unified to one rank: 8 experts."""
    src = make_set("ep4", world=4, nodes_fn=ep_nodes, scales=True)
    unify(src, tmp_path / "u", ranks=1, expert_parallel=True)
    return tmp_path / "u"


@pytest.mark.parametrize("world", [1, 2, 4, 8])
def test_expand_slices_the_per_expert_amax(unified: Path, tmp_path: Path, world: int) -> None:
    src = load_doc(unified / f"{PREFIX}_0_1.json")
    out = tmp_path / "e"
    result = expand(unified, out, world)
    per = 8 // world
    for r in range(world):
        doc = load_doc(out / f"{PREFIX}_{r}_{world}.json")
        assert doc["LocalRank"] == r and doc["GlobalRank"] is None and doc["Mode"] == "DynamicRange"
        assert list(doc["Nodes"]) == list(src["Nodes"])  # every rank keeps every node
        for name, node in doc["Nodes"].items():
            if name.endswith("moe_op"):
                outputs = src["Nodes"][name]["outputs"]
                assert node["outputs"] == [outputs[0], *outputs[1 + r * per : 1 + (r + 1) * per]]
                assert node["inputs"] == src["Nodes"][name]["inputs"]
            else:
                assert node == src["Nodes"][name]
        npz = load_npz(out / f"{PREFIX}_{r}_{world}.npz")
        assert npz["LocalRank"] == r
        assert len(npz["Nodes"][OP]["outputs"]) == 1 + per
        assert npz["Nodes"][OP]["outputs"][1].dtype == np.float32
        assert json.loads((out / f"{PREFIX}_{r}_{world}_mod_list.json").read_text())
    assert not any("MAXABS" in f for f in result.files)
    assert any("scale files not expanded" in n for n in result.notes)


def test_unify_then_expand_to_the_calibration_size_gives_back_each_ranks_amax(
    make_set, tmp_path: Path
) -> None:
    src = make_set("ep4", world=4, nodes_fn=ep_nodes)
    unify(src, tmp_path / "u", ranks=1, expert_parallel=True)
    expand(tmp_path / "u", tmp_path / "e", 4)
    for r in range(4):
        original = load_doc(src / f"{PREFIX}_{r}_4.json")["Nodes"][OP]["outputs"]
        back = load_doc(tmp_path / "e" / f"{PREFIX}_{r}_4.json")["Nodes"][OP]["outputs"]
        assert back[1:] == original[1:]
        assert back[0] == [
            [
                max(
                    load_doc(src / f"{PREFIX}_{k}_4.json")["Nodes"][OP]["outputs"][0][0][0]
                    for k in range(4)
                )
            ]
        ]


def test_expand_refuses_experts_not_divisible_by_the_world(unified: Path, tmp_path: Path) -> None:
    with pytest.raises(
        MeasurementError, match=r"8 experts are not divisible by -w 3; use one of 1, 2, 4, 8"
    ):
        expand(unified, tmp_path / "e", 3)
    assert not (tmp_path / "e").exists()


def test_expand_refuses_an_expanded_set(unified: Path, tmp_path: Path) -> None:
    expand(unified, tmp_path / "e", 4)
    with pytest.raises(
        MeasurementError, match="this is an expanded set .* cannot be expanded again"
    ):
        expand(tmp_path / "e", tmp_path / "e2", 2)


def test_expand_refuses_a_multi_rank_calibration(make_set, tmp_path: Path) -> None:
    src = make_set("ep4", world=4, nodes_fn=ep_nodes)
    with pytest.raises(
        MeasurementError,
        match=r"needs a unified single-rank set .* world 4: unify them with -r 1 -u",
    ):
        expand(src, tmp_path / "e", 2)


def test_expand_refuses_a_single_rank_set_with_sliced_amax(tmp_path: Path) -> None:
    nodes = ep_nodes(0, experts=4)
    nodes[OP]["outputs"] = nodes[OP]["outputs"][:3]  # 2 amax for 4 experts
    write_rank(tmp_path / "s", 0, 1, nodes)
    with pytest.raises(
        MeasurementError,
        match=r"holds 2 per-expert amax values but 4 experts: this is not a unified set",
    ):
        expand(tmp_path / "s", tmp_path / "e", 2)


def test_expand_of_a_dense_model_copies_every_rank(make_set, tmp_path: Path) -> None:
    src = make_set("dense", world=1)
    result = expand(src, tmp_path / "e", 3)
    base = load_doc(src / f"{PREFIX}_0_1.json")["Nodes"]
    for r in range(3):
        assert load_doc(tmp_path / "e" / f"{PREFIX}_{r}_3.json")["Nodes"] == base
    assert any("every rank gets the same" in n for n in result.notes)


def test_expand_rejects_a_zero_world(unified: Path, tmp_path: Path) -> None:
    with pytest.raises(MeasurementError, match="at least 1"):
        expand(unified, tmp_path / "e", 0)


# ---------------------------------------------------------------------------------------------
# postprocess


def _attn(doc: dict, layer: int, what: str) -> list:
    return doc["Nodes"][f"model.layers.{layer}.self_attn.attn.impl.{what}"]["inputs"]


def test_postprocess_feeds_cache_ranges_to_the_matmuls(make_set, tmp_path: Path) -> None:
    src = make_set("d", world=2, scales=True)
    result = postprocess(src, tmp_path / "p")
    for r in range(2):
        before = load_doc(src / f"{PREFIX}_{r}_2.json")
        after = load_doc(tmp_path / "p" / f"{PREFIX}_{r}_2.json")
        for layer in (0, 1):
            assert _attn(after, layer, "matmul_qk")[1] == _attn(before, layer, "k_cache")[0]
            assert _attn(after, layer, "matmul_av")[1] == _attn(before, layer, "v_cache")[0]
            assert _attn(after, layer, "matmul_qk")[0] == _attn(before, layer, "matmul_qk")[0]
        changed = {n for n in before["Nodes"] if before["Nodes"][n] != after["Nodes"][n]}
        assert changed <= {
            f"model.layers.{i}.self_attn.attn.impl.{m}"
            for i in (0, 1)
            for m in ("matmul_qk", "matmul_av")
        }
        scales = load_doc(tmp_path / "p" / f"{PREFIX}_MAXABS_HW_{r}_2.json")
        assert _attn(scales, 0, "matmul_qk")[1] == _attn(scales, 0, "k_cache")[0]
        npz = load_npz(tmp_path / "p" / f"{PREFIX}_{r}_2.npz")
        qk = npz["Nodes"]["model.layers.0.self_attn.attn.impl.matmul_qk"]["inputs"][1]
        np.testing.assert_array_equal(
            qk, np.array(_attn(before, 0, "k_cache")[0], dtype=np.float32)
        )
    assert (tmp_path / "p" / f"{PREFIX}_0_2_mod_list.json").exists()
    assert (
        result.notes[0] == "2 attention blocks per file; 8 matmul inputs changed"
    )  # ranges only: scales agree


def _mla_nodes(rank: int) -> dict:
    nodes = {}
    for layer in range(2):
        p = f"model.layers.{layer}.self_attn.mla_attn.mla_attn.impl"
        nodes[f"{p}.matmul_qk"] = {"inputs": [[[1.0 + rank]], [[2.0]]]}
        nodes[f"{p}.matmul_av"] = {"inputs": [[[1.0]], [[0.5]]]}
        nodes[f"{p}.latent_cache_k"] = {"inputs": [[[28.0 + layer]]]}
    return nodes


def test_postprocess_deepseek_uses_the_latent_cache_for_both(make_set, tmp_path: Path) -> None:
    src = make_set("mla", world=1, nodes_fn=_mla_nodes)
    postprocess(src, tmp_path / "p", deepseek=True)
    doc = load_doc(tmp_path / "p" / f"{PREFIX}_0_1.json")["Nodes"]
    for layer in range(2):
        p = f"model.layers.{layer}.self_attn.mla_attn.mla_attn.impl"
        assert doc[f"{p}.matmul_qk"]["inputs"] == [[[1.0]], [[28.0 + layer]]]
        assert doc[f"{p}.matmul_av"]["inputs"] == [[[1.0]], [[28.0 + layer]]]


def test_postprocess_without_deepseek_on_mla_changes_nothing_and_says_why(
    make_set, tmp_path: Path
) -> None:
    src = make_set("mla", world=1, nodes_fn=_mla_nodes)
    result = postprocess(src, tmp_path / "p")
    assert (
        load_doc(tmp_path / "p" / f"{PREFIX}_0_1.json")["Nodes"]
        == load_doc(src / f"{PREFIX}_0_1.json")["Nodes"]
    )
    assert any("use -d" in n for n in result.notes)


def test_postprocess_in_place_replaces_the_files(make_set) -> None:
    src = make_set("d", world=1)
    postprocess(src, src)
    doc = load_doc(src / f"{PREFIX}_0_1.json")
    assert _attn(doc, 0, "matmul_av")[1] == _attn(doc, 0, "v_cache")[0]
    assert not [p for p in src.parent.iterdir() if p.name.startswith(".")]


def test_postprocess_copies_a_cache_of_another_shape(tmp_path: Path) -> None:
    nodes = {
        "b.matmul_qk": {"inputs": [[[1.0]], [[2.0]]]},
        "b.k_cache": {"inputs": [[[3.0], [4.0]]]},
    }
    write_rank(tmp_path / "s", 0, 1, nodes)
    postprocess(tmp_path / "s", tmp_path / "p")
    assert load_doc(tmp_path / "p" / f"{PREFIX}_0_1.json")["Nodes"]["b.matmul_qk"]["inputs"] == [
        [[1.0]],
        [[3.0], [4.0]],
    ]


def test_postprocess_of_scale_only_nodes_keeps_structure(tmp_path: Path) -> None:
    nodes = dense_nodes(0)
    write_rank(tmp_path / "s", 0, 1, nodes)
    write_rank(tmp_path / "s", 0, 1, scale_nodes(nodes), method="MAXABS_HW")
    postprocess(tmp_path / "s", tmp_path / "p")
    doc = load_doc(tmp_path / "p" / f"{PREFIX}_MAXABS_HW_0_1.json")
    assert doc["Mode"] == "Scale"
    assert doc["Nodes"]["model.layers.0.self_attn.qkv_proj"]["params"] == {"weight": 1.0}
