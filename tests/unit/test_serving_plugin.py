"""Pure parts of the harness's vLLM plugin (the vLLM-facing parts run in the integration tests)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from harness.serving.cpu_moe import local_routing
from harness.serving.cpu_moe import moe_node
from harness.serving.cpu_moe import pow2_scale
from harness.serving.cpu_moe import qdq_rows
from harness.serving.inc_plugin import resolved_config_path

ENTRY = Path(__file__).resolve().parents[2] / "harness" / "serving" / "vllm_entry"


def test_vllm_finds_the_plugin_through_the_entry_point_directory():
    text = (ENTRY / "harness_vllm_plugins-0.1.0.dist-info" / "entry_points.txt").read_text()
    assert "[vllm.general_plugins]" in text
    assert "harness_inc = harness.serving.inc_plugin:register" in text


def test_expert_parallel_routing_keeps_local_experts_and_zeroes_the_others():
    torch = pytest.importorskip("torch")
    # EP2, 8 experts: this rank holds global experts 4..7 as local slots 0..3
    expert_map = torch.tensor([-1, -1, -1, -1, 0, 1, 2, 3], dtype=torch.int32)
    ids = torch.tensor([[4, 1], [7, 6], [0, 2]], dtype=torch.int32)
    weights = torch.tensor([[0.6, 0.4], [0.7, 0.3], [0.5, 0.5]])
    local_ids, local_weights = local_routing(ids, weights, expert_map)
    assert local_ids.tolist() == [[0, 0], [3, 2], [0, 0]]
    assert torch.allclose(local_weights, torch.tensor([[0.6, 0.0], [0.7, 0.3], [0.0, 0.0]]))
    assert local_ids.dtype == ids.dtype


def test_expert_weights_are_rounded_to_fp8_one_scale_per_row():
    torch = pytest.importorskip("torch")
    w = torch.randn(2, 4, 64, dtype=torch.bfloat16)
    original = w.clone()
    qdq_rows(w)
    row_max = original.float().abs().amax(dim=-1)
    assert torch.allclose(w.float().abs().amax(dim=-1), row_max, rtol=1e-2)  # max is exact
    rel = ((w.float() - original.float()).abs() / row_max[..., None]).max()
    assert 0 < rel < 0.07  # e4m3: 3 mantissa bits
    again = w.clone()
    qdq_rows(again)
    assert torch.equal(again, w)  # idempotent: the values are FP8 values already


def test_activation_scales_follow_incs_power_of_two_rule():
    # measured on a real vLLM CPU run: qkv_proj input maxabs 3.71875 -> scale 2^-4 (Gaudi3/CPU)
    assert pow2_scale(3.71875) == 0.0625
    assert pow2_scale(3.71875, full_scale=240.0) == 0.0625
    assert pow2_scale(0.0) > 0


def test_the_moe_range_is_found_by_layer_whatever_the_block_is_called():
    ranges = {
        "model.layers.1.mlp.experts.moe_op": {"inputs": [[[2.5]]]},
        "model.layers.1.mlp.experts.moe_op.w13_list.0": {"inputs": [[[0.0]]]},
        "model.layers.10.mlp.experts.moe_op": {"inputs": [[[9.0]]]},
    }
    node = moe_node("model.layers.1.block_sparse_moe.experts", ranges)
    assert node == {"inputs": [[[2.5]]]}
    assert moe_node("model.layers.2.block_sparse_moe.experts", ranges) is None
    assert moe_node("lm_head", ranges) is None


def test_a_relative_dump_path_is_joined_to_the_inc_prefix_like_vllm_gaudi(tmp_path, monkeypatch):
    config = tmp_path / "quant.json"
    config.write_text(json.dumps({"mode": "QUANTIZE", "dump_stats_path": "meas/inc_output"}))
    monkeypatch.setenv("QUANT_CONFIG", str(config))
    monkeypatch.delenv("INC_MEASUREMENT_DUMP_PATH_PREFIX", raising=False)
    assert resolved_config_path() == config
    monkeypatch.setenv("INC_MEASUREMENT_DUMP_PATH_PREFIX", "/workspace/vllm-fork")
    rewritten = resolved_config_path()
    try:
        assert json.loads(rewritten.read_text())["dump_stats_path"] == (
            "/workspace/vllm-fork/meas/inc_output"
        )
    finally:
        os.unlink(rewritten)
    monkeypatch.setenv("QUANT_CONFIG", str(tmp_path / "missing.json"))
    with pytest.raises(FileNotFoundError, match="is not a file: point it at the INC"):
        resolved_config_path()


def test_activation_qdq_saturates_instead_of_overflowing_to_nan():
    torch = pytest.importorskip("torch")
    from harness.serving.cpu_moe import qdq

    x = torch.tensor([1000.0, -3.3, 0.0], dtype=torch.bfloat16)
    y = qdq(x, 1.0, torch.float8_e4m3fn)
    assert y.tolist() == [448.0, -3.25, 0.0]
    assert y.dtype == torch.bfloat16
