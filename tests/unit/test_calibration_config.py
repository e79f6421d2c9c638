"""calibrate_model.sh's configs and family rules, and the CPU variants INC needs."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.calibration import config as c
from harness.errors import HarnessError

OUT = Path("/nfs/fp8_output")


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("meta-llama/Llama-3.1-405B-Instruct", "llama-3.1-405b-instruct"),
        ("/data/hf_models/DeepSeek-R1-0528-G2/", "deepseek-r1-0528-g2"),
        ("/work/main/harness/miniature/weights/tiny-moe", "tiny-moe"),
    ],
    ids=["hub-id", "trailing-slash", "local"],
)
def test_model_folder_is_the_lower_cased_last_path_part(source, name):
    assert c.model_dir_name(source) == name


def test_default_measure_config_is_the_scripts_json():
    cfg = c.measure_config(OUT, "llama-3.1-8b-instruct", "g2")
    assert cfg == {
        "method": "HOOKS",
        "mode": "MEASURE",
        "observer": "maxabs",
        "allowlist": {"types": [], "names": []},
        "blocklist": {"types": [], "names": []},
        "quantize_weight": False,
        "dump_stats_path": "/nfs/fp8_output/llama-3.1-8b-instruct/g2/inc_output",
        "calibration_sample_interval": 1,
    }


def test_default_quant_config_uses_maxabs_hw_and_the_same_dump_path():
    cfg = c.quant_config(OUT, "llama-3.1-8b-instruct", "g3")
    assert cfg["mode"] == "QUANTIZE"
    assert cfg["scale_method"] == "maxabs_hw"
    assert "scale_format" not in cfg
    assert cfg["dump_stats_path"] == "/nfs/fp8_output/llama-3.1-8b-instruct/g3/inc_output"


def test_mixtral_blocks_attention_and_lm_head_and_quantizes_with_const_scales():
    m = c.measure_config(OUT, "mixtral-8x7b-instruct-v0.1", "g2")
    q = c.quant_config(OUT, "mixtral-8x7b-instruct-v0.1", "g2")
    assert m["blocklist"]["names"] == ["self_attn", "lm_head"]
    assert q["blocklist"]["names"] == ["self_attn", "lm_head"]
    assert q["scale_format"] == "CONST"


def test_deepseek_blocks_lm_head_and_the_router_gate_with_the_scripts_regex():
    q = c.quant_config(OUT, "deepseek-r1-0528-g2", "g2")
    assert q["blocklist"]["names"] == ["lm_head", r"mlp\.gate\b"]
    assert q["scale_format"] == "scalar"
    rule = c.flag_rule_for("deepseek-r1-0528-g2")
    assert rule is not None and rule.step3_flags == ("--deepseek",)
    assert dict(rule.step2_env) == {"VLLM_HPU_FORCE_CHANNEL_FP8": "0"}


def test_family_branches_match_the_start_of_the_name_but_flags_match_anywhere():
    assert c.rule_for("my-deepseek-r1").family == "default"
    flags = c.flag_rule_for("my-deepseek-r1")
    assert flags is not None and flags.family == "deepseek"


def test_granite4_branch_is_recognised_but_its_unknown_blocklist_is_not_guessed():
    assert c.rule_for("granite-4.0-h-small").family == "granite-4"
    with pytest.raises(HarnessError, match="granite-4.*does not know"):
        c.measure_config(OUT, "granite-4.0-h-small", "g2")


def test_cpu_configs_add_use_qdq_and_a_cpu_valid_scale_method():
    m = c.cpu_measure_config(OUT, "tiny-llama", "cpu")
    q = c.cpu_quant_config(OUT, "tiny-llama", "cpu")
    assert m["use_qdq"] is True and m["mode"] == "MEASURE"
    assert q["use_qdq"] is True
    assert q["scale_method"] == "maxabs_pow2"
    assert "device_for_scales" not in q


@pytest.mark.parametrize(("device", "scale_device"), [("g2", "GAUDI2"), ("g3", "GAUDI3")])
def test_cpu_configs_for_a_gaudi_target_reproduce_its_scales(device, scale_device):
    q = c.cpu_quant_config(OUT, "mixtral-tiny", device)
    assert q["scale_method"] == "maxabs_hw"
    assert q["device_for_scales"] == scale_device
    assert "scale_format" not in q  # CPU per-tensor scales must be scalar


def test_maxabs_hw_without_a_gaudi_target_is_rejected_with_the_valid_choices():
    with pytest.raises(HarnessError, match="maxabs_pow2.*target_device g2/g3"):
        c.scale_method_for("cpu", "maxabs_hw")


def test_a_gaudi_target_only_takes_maxabs_hw():
    with pytest.raises(HarnessError, match="use maxabs_hw"):
        c.scale_method_for("g2", "maxabs_pow2")


def test_scale_file_method_is_the_upper_case_method():
    assert c.scale_file_method({"scale_method": "maxabs_hw"}) == "MAXABS_HW"


def test_key_configs_ignore_the_dump_path():
    a = c.without_paths(c.quant_config(OUT, "x", "g2"))
    b = c.without_paths(c.quant_config(Path("/elsewhere"), "x", "g2"))
    assert a == b
