"""The INC measure/quant configs calibrate_model.sh writes, and the model-family rules it applies.

vllm-gaudi's `calibration/calibrate_model.sh` names the model after the last folder of `-m`,
lower-cased, and writes `<out>/<model>/maxabs_measure_<device>.json` and
`maxabs_quant_<device>.json` with `dump_stats_path = <out>/<model>/<device>/inc_output`.
Model families get their own blocklists and flags:

* `^mixtral`: attention and lm_head are not measured/quantized (blocklist names
  `self_attn`, `lm_head`); the quant config sets `scale_format: CONST`.
* `^deepseek`: blocklist `lm_head` and the router `mlp\\.gate\\b`; quant `scale_format: scalar`;
  `*deepseek*` adds `--block-quant --expert-parallel` and `VLLM_HPU_FORCE_CHANNEL_FP8=0` to
  steps 2 and 4 and `--deepseek` to step 3.
* `^granite-4` (vllm-gaudi PR #1221, "Granite-4.0-h Calibration config"): the script has its own
  branch, whose blocklist we could not read from a stored copy of the script. On Gaudi the script
  writes it (the harness copies what it wrote); on CPU the harness refuses to guess.

The CPU backend writes the same configs plus what INC needs on CPU: `use_qdq: true` (MEASURE and
QUANTIZE fail without it), a CPU-valid `scale_method` or `maxabs_hw` with `device_for_scales`
(GAUDI2/GAUDI3) to reproduce a Gaudi target's scales exactly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.devices import DEVICES
from harness.devices import GAUDI_DEVICES
from harness.errors import HarnessError

# Gaudi generation -> INC's device_for_scales (fullscale 240 on Gaudi2, 448 on Gaudi3)
SCALE_DEVICE = {n: str(DEVICES[n].inc_device) for n in GAUDI_DEVICES}
# scale methods INC accepts on CPU without device_for_scales (DESIGN.md "INC on CPU")
CPU_SCALE_METHODS = (
    "maxabs_pow2",
    "maxabs_arbitrary",
    "act_maxabs_pow2_weights_pcs_maxabs_pow2",
    "unit_scale",
)
DEFAULT_CPU_SCALE_METHOD = "maxabs_pow2"
GAUDI_SCALE_METHOD = "maxabs_hw"


@dataclass(frozen=True)
class ModelRule:
    """One branch of calibrate_model.sh: which models, what blocklist and extra flags."""

    family: str
    config_pattern: str  # regex on the lower-cased model name (create_*_config)
    flags_substring: str | None = None  # `*x*` match for the step flags
    measure_blocklist: tuple[str, ...] | None = ()
    quant_blocklist: tuple[str, ...] | None = ()
    quant_extra: tuple[tuple[str, Any], ...] = ()
    step2_flags: tuple[str, ...] = ()
    step2_env: tuple[tuple[str, str], ...] = ()
    step3_flags: tuple[str, ...] = ()
    verified: bool = True  # False: the script's branch exists but its content is not known here

    def matches_config(self, model: str) -> bool:
        return re.search(self.config_pattern, model) is not None

    def matches_flags(self, model: str) -> bool:
        return self.flags_substring is not None and self.flags_substring in model


RULES: tuple[ModelRule, ...] = (
    ModelRule(
        "mixtral",
        r"^mixtral",
        measure_blocklist=("self_attn", "lm_head"),
        quant_blocklist=("self_attn", "lm_head"),
        quant_extra=(("scale_format", "CONST"),),
    ),
    ModelRule(
        "deepseek",
        r"^deepseek",
        flags_substring="deepseek",
        measure_blocklist=("lm_head", r"mlp\.gate\b"),
        quant_blocklist=("lm_head", r"mlp\.gate\b"),
        quant_extra=(("scale_format", "scalar"),),
        step2_flags=("--block-quant", "--expert-parallel"),
        step2_env=(("VLLM_HPU_FORCE_CHANNEL_FP8", "0"),),
        step3_flags=("--deepseek",),
    ),
    ModelRule(
        "granite-4",
        r"^granite-4",
        flags_substring="granite-4",
        measure_blocklist=None,
        quant_blocklist=None,
        verified=False,
    ),
)
DEFAULT_RULE = ModelRule("default", r"")


def model_dir_name(source: str) -> str:
    """The script's MODEL_NAME: last folder of the model path or hub id, lower-cased."""
    name = Path(str(source).rstrip("/")).name
    if not name:
        raise HarnessError(f"model {source!r}: cannot derive the calibration folder name")
    return name.lower()


def rule_for(model: str) -> ModelRule:
    """The calibrate_model.sh branch a (lower-cased) model name falls in."""
    return next((r for r in RULES if r.matches_config(model)), DEFAULT_RULE)


def flag_rule_for(model: str) -> ModelRule | None:
    """The rule whose step flags apply (the script matches `*deepseek*`, not `^deepseek`)."""
    return next((r for r in RULES if r.matches_flags(model)), None)


def dump_stats_path(out: Path, model: str, device: str) -> Path:
    return out / model / device / "inc_output"


def _lists(names: tuple[str, ...]) -> dict[str, Any]:
    return {
        "allowlist": {"types": [], "names": []},
        "blocklist": {"types": [], "names": list(names)},
    }


def _known(rule: ModelRule, names: tuple[str, ...] | None, model: str) -> tuple[str, ...]:
    if names is None or not rule.verified:
        raise HarnessError(
            f"model {model!r} matches calibrate_model.sh's '{rule.family}' branch, whose "
            "blocklist the harness does not know; calibrate it with the gaudi backend (the script "
            "writes its own config) or add the rule to harness/calibration/config.py"
        )
    return names


def measure_config(out: Path, model: str, device: str) -> dict[str, Any]:
    """`maxabs_measure_<device>.json` exactly as calibrate_model.sh writes it."""
    rule = rule_for(model)
    return {
        "method": "HOOKS",
        "mode": "MEASURE",
        "observer": "maxabs",
        **_lists(_known(rule, rule.measure_blocklist, model)),
        "quantize_weight": False,
        "dump_stats_path": str(dump_stats_path(out, model, device)),
        "calibration_sample_interval": 1,
    }


def quant_config(out: Path, model: str, device: str) -> dict[str, Any]:
    """`maxabs_quant_<device>.json` exactly as calibrate_model.sh writes it."""
    rule = rule_for(model)
    cfg: dict[str, Any] = {
        "mode": "QUANTIZE",
        "observer": "maxabs",
        "scale_method": GAUDI_SCALE_METHOD,
        **dict(rule.quant_extra),
        **_lists(_known(rule, rule.quant_blocklist, model)),
        "dump_stats_path": str(dump_stats_path(out, model, device)),
    }
    return cfg


def cpu_measure_config(out: Path, model: str, device: str) -> dict[str, Any]:
    """The script's measure config plus `use_qdq` (INC refuses MEASURE on CPU without it)."""
    return {**measure_config(out, model, device), "use_qdq": True}


def cpu_quant_config(
    out: Path, model: str, device: str, scale_method: str | None = None
) -> dict[str, Any]:
    """The script's quant config made valid on CPU.

    For a g2/g3 target: `maxabs_hw` with `device_for_scales` GAUDI2/GAUDI3 (the Gaudi scales,
    bit for bit). For a cpu target: `scale_method` (default maxabs_pow2, Gaudi-like power-of-2
    scales with the CPU's 448 full scale). `scale_format: CONST` is dropped: per-tensor scales
    on CPU must be scalar (INC would switch it with a warning).
    """
    cfg = {**quant_config(out, model, device), "use_qdq": True}
    cfg.pop("scale_format", None)
    method, scale_device = scale_method_for(device, scale_method)
    cfg["scale_method"] = method
    if scale_device:
        cfg["device_for_scales"] = scale_device
    return cfg


def scale_method_for(device: str, requested: str | None = None) -> tuple[str, str | None]:
    """(scale_method, device_for_scales) for a target device; errors name the valid choices."""
    if device in SCALE_DEVICE:
        method = requested or GAUDI_SCALE_METHOD
        if method != GAUDI_SCALE_METHOD:
            raise HarnessError(
                f"scale_method {method!r} for a {device} target: use maxabs_hw (with "
                f"device_for_scales {SCALE_DEVICE[device]} it reproduces the Gaudi scales)"
            )
        return method, SCALE_DEVICE[device]
    method = requested or DEFAULT_CPU_SCALE_METHOD
    if method not in CPU_SCALE_METHODS:
        raise HarnessError(
            f"scale_method {method!r} is not valid on CPU without a Gaudi target; use one of "
            f"{', '.join(CPU_SCALE_METHODS)} (or target_device g2/g3 for maxabs_hw)"
        )
    return method, None


def scale_file_method(config: dict[str, Any]) -> str:
    """The upper-case method INC puts in scale file names (`..._MAXABS_HW_0_8.json`)."""
    return str(config.get("scale_method", GAUDI_SCALE_METHOD)).upper()


def without_paths(config: dict[str, Any]) -> dict[str, Any]:
    """The config minus `dump_stats_path`: what a calibration key digests."""
    return {k: v for k, v in config.items() if k != "dump_stats_path"}
