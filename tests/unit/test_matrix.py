"""Matrix loading, expansion and ids (malformed matrices: tests/data/matrices/bad/, run by
test_matrix_corpus.py)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from harness.cell import Stage
from harness.errors import MatrixError
from harness.matrix import load_matrix
from harness.matrix import resolve_matrix_path

DATA = Path(__file__).resolve().parent.parent / "data" / "matrices"

GOOD = """
name: t
models:
  dense: {path: /m/dense, num_attention_heads: 8}
  moe: {path: /m/moe, moe: true, num_experts: 8}
axes:
  device: [cpu]
"""


def write(tmp_path: Path, text: str, name: str = "m.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_product_expands_with_readable_stable_ids(tmp_path):
    matrix = load_matrix(write(tmp_path, GOOD + "  tp: [1, 2]\n  quantization: [bf16, fp8]\n"))
    ids = [c.id for c in matrix.cells]
    assert ids[:4] == [
        "dense/cpu/tp1/bf16-kv-auto",
        "dense/cpu/tp1/fp8-kv-auto",
        "dense/cpu/tp2/bf16-kv-auto",
        "dense/cpu/tp2/fp8-kv-auto",
    ]
    assert len(ids) == len(set(ids)) == 8
    assert ids == [
        c.id
        for c in load_matrix(
            write(tmp_path, GOOD + "  tp: [1, 2]\n  quantization: [bf16, fp8]\n", "again.yaml")
        ).cells
    ]


def test_ids_show_nodes_pp_and_ep_only_when_used(tmp_path):
    text = """
    name: t
    models: {moe: {hub_id: org/moe, moe: true, num_experts: 32}}
    axes: {device: [g2], tp: [16], pp: [1], ep: [16], nodes: [2], quantization: [fp8], kv_cache_dtype: [fp8_inc]}
    include:
      - {model: moe, device: g2, tp: 8, pp: 2, nodes: 2, quantization: fp8}
    """
    ids = [c.id for c in load_matrix(write(tmp_path, text)).cells]
    assert ids == ["moe/g2-n2/tp16-ep16/fp8-kv-fp8_inc", "moe/g2-n2/tp8-pp2/fp8-kv-auto"]


def test_bf16_cells_have_no_calibration_stage(tmp_path):
    cells = load_matrix(write(tmp_path, GOOD + "  quantization: [bf16, fp8]\n")).cells
    bf16, fp8 = cells[0], cells[1]
    assert Stage.CALIBRATION not in bf16.stages
    assert Stage.CALIBRATION in fp8.stages


def test_exclude_removes_matching_cells_and_include_adds_new_ones(tmp_path):
    text = (
        GOOD
        + """  quantization: [bf16, fp8]
exclude:
  - {model: moe}
  - {model: dense, quantization: fp8}
include:
  - {model: moe, ep: 2, quantization: fp8, kv_cache_dtype: fp8}
  - {model: dense, quantization: bf16}
"""
    )
    ids = [c.id for c in load_matrix(write(tmp_path, text)).cells]
    assert ids == ["dense/cpu/tp1/bf16-kv-auto", "moe/cpu/tp1-ep2/fp8-kv-fp8"]


def test_per_model_axes_replace_the_matrix_axes_for_that_model():
    matrix = load_matrix(DATA / "base.yaml")
    moe_eps = sorted({c.ep for c in matrix.cells if c.model.name == "m-moe"})
    dense_eps = {c.ep for c in matrix.cells if c.model.name == "m-dense"}
    assert moe_eps == [1, 2, 4]
    assert dense_eps == {1}


def test_extends_merges_the_base_with_local_keys_winning_and_overrides_apply_per_cell():
    matrix = load_matrix(DATA / "child.yaml")
    assert matrix.name == "child"
    assert all(c.quantization == "fp8" for c in matrix.cells)
    moe = next(c for c in matrix.cells if c.model.name == "m-moe")
    dense = next(c for c in matrix.cells if c.model.name == "m-dense")
    assert moe.gates["accuracy.exact_match_strict"].min == 0.4
    assert dense.gates["accuracy.exact_match_strict"].min == 0.5
    assert moe.settings.accuracy.limit == 10
    assert dense.settings.accuracy.limit is None


def test_unknown_matrix_name_suggests_close_names():
    with pytest.raises(
        MatrixError, match=r"Unknown matrix 'nightly-g4'\. Did you mean: nightly-g3"
    ):
        resolve_matrix_path("nightly-g4")


def test_relative_model_path_is_relative_to_the_matrix_file(tmp_path):
    sub = tmp_path / "sub"
    sub.mkdir()
    path = write(sub, "name: t\nmodels: {m: {path: ../weights/m}}\n")
    cell = load_matrix(path).cells[0]
    assert cell.model.path == str((tmp_path / "weights" / "m").resolve())


@pytest.mark.parametrize("name", ["smoke-cpu", "nightly-g2", "nightly-g3", "deepseek-r1-multinode"])
def test_shipped_matrices_load(name):
    matrix = load_matrix(name)
    assert matrix.cells
    assert matrix.backend == ("cpu" if name == "smoke-cpu" else "gaudi")


def test_multinode_matrix_has_the_seed_cells():
    ids = {c.id for c in load_matrix("deepseek-r1-multinode").cells}
    assert "deepseek-r1-0528/g2-n2/tp16-ep16/fp8-kv-fp8_inc" in ids
    assert "deepseek-r1-0528/g2-n4/tp32-ep32/fp8-kv-fp8_inc" in ids
    assert "llama-3.1-405b/g2/tp8/fp8-kv-fp8_inc" in ids
    assert "llama-3.1-405b/g2-n2/tp16/fp8-kv-fp8_inc" in ids


def test_backend_options_reach_the_cell_and_an_override_adds_to_the_env(tmp_path):
    m = load_matrix(write(tmp_path, GOOD + """
backend_options:
  fp8_kv_cache: emulated
  env: {VLLM_SKIP_WARMUP: true, OMP_NUM_THREADS: 2}
overrides:
  - cells: 'moe/*'
    backend_options: {env: {EXTRA: x}, fp8_kv_cache: native}
"""))
    by = {c.model.name: c.backend_options for c in m.cells}
    assert by["dense"] == {"fp8_kv_cache": "emulated",
                           "env": {"VLLM_SKIP_WARMUP": True, "OMP_NUM_THREADS": 2}}
    assert by["moe"] == {"fp8_kv_cache": "native",
                         "env": {"VLLM_SKIP_WARMUP": True, "OMP_NUM_THREADS": 2, "EXTRA": "x"}}


def test_a_matrix_elsewhere_that_extends_smoke_cpu_finds_its_models(tmp_path: Path) -> None:
    """The base's relative model paths are relative to the base, not to the child."""
    import os

    from harness.matrix_files import MATRICES_DIR

    base = os.path.relpath(MATRICES_DIR / "smoke-cpu.yaml", tmp_path)
    child = tmp_path / "nightly-short.yaml"
    child.write_text(f"extends: {base}\nname: short\nsettings:\n  accuracy: {{limit: 8}}\n")
    cells = load_matrix(child).cells
    paths = {c.model.path for c in cells}
    assert paths == {
        str((MATRICES_DIR / "../harness/miniature/weights" / name).resolve())
        for name in ("tiny-llama", "tiny-moe")
    }
    assert all(Path(p).is_dir() for p in paths if p)
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "b.yaml").write_text(
        "name: b\nmodels:\n  a: {path: weights/a, num_attention_heads: 4}\naxes:\n"
        "  device: [cpu]\n"
    )
    (tmp_path / "kid").mkdir()
    kid = tmp_path / "kid" / "k.yaml"
    kid.write_text("extends: ../base/b.yaml\nname: k\n")
    assert {c.model.path for c in load_matrix(kid).cells} == {str(tmp_path / "base/weights/a")}
    kid.write_text(  # a child's own models are relative to the child
        "extends: ../base/b.yaml\nname: k\nmodels:\n  a: {path: mine, num_attention_heads: 4}\n"
    )
    assert {c.model.path for c in load_matrix(kid).cells} == {str(tmp_path / "kid/mine")}
