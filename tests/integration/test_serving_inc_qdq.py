"""The plugin's QDQ speed-up on a model INC really converted: same outputs, bit for bit."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.integration


def _inc_convert(tmp_path, make_model, x):
    """Measure `make_model()` on `x` with INC (QDQ, maxabs), then convert a fresh copy with
    the measured scales: what the plugin serves."""
    inc = pytest.importorskip("neural_compressor.torch.quantization")
    model = make_model()
    measure = {"method": "HOOKS", "mode": "MEASURE", "observer": "maxabs",
               "dump_stats_path": str(tmp_path / "inc_output"), "use_qdq": True}
    quant = {**measure, "mode": "QUANTIZE", "scale_method": "maxabs_hw",
             "device_for_scales": "GAUDI3"}
    (tmp_path / "measure.json").write_text(json.dumps(measure))
    (tmp_path / "quant.json").write_text(json.dumps(quant))
    prepared = inc.prepare(model, inc.FP8Config.from_json_file(str(tmp_path / "measure.json")))
    prepared(x)
    inc.finalize_calibration(prepared)
    fresh = make_model()
    fresh.load_state_dict(model.state_dict())
    return inc.convert(fresh, inc.FP8Config.from_json_file(str(tmp_path / "quant.json")))


def test_streamlined_qdq_gives_incs_outputs_bit_for_bit(tmp_path):
    torch = pytest.importorskip("torch")
    from torch import nn

    from harness.serving.inc_plugin import speed_up_qdq

    class Mlp(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.up = nn.Linear(64, 192, bias=False)
            self.down = nn.Linear(192, 64, bias=False)

        def forward(self, x):
            return self.down(torch.relu(self.up(x)))

    torch.manual_seed(0)
    weights = Mlp().to(torch.bfloat16).state_dict()

    def make_model():
        model = Mlp().to(torch.bfloat16)
        model.load_state_dict(weights)
        return model

    x = torch.randn(4, 64, dtype=torch.bfloat16)
    converted = _inc_convert(tmp_path, make_model, x)
    big = x * 300  # past the measured range: saturation must match too
    before = converted(x), converted(big)
    assert speed_up_qdq(converted) == (2, 2)
    after = converted(x), converted(big)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    assert speed_up_qdq(converted)[0] == 0  # weights are dequantized once, not again


def test_a_weight_repacked_away_before_inc_is_a_clear_error(tmp_path):
    torch = pytest.importorskip("torch")
    from torch import nn

    from harness.serving.inc_plugin import speed_up_qdq

    converted = _inc_convert(
        tmp_path,
        lambda: nn.Sequential(nn.Linear(16, 16, bias=False)).to(torch.bfloat16),
        torch.randn(2, 16, dtype=torch.bfloat16),
    )
    # what vLLM CPU's oneDNN/SGL dispatch leaves behind on an AVX-512 host
    converted[0].weight = nn.Parameter(torch.empty(0, dtype=torch.bfloat16), requires_grad=False)
    with pytest.raises(RuntimeError, match=r"converted 0 without its weight"):
        speed_up_qdq(converted)
