"""What a calibration gives a cell: the files to serve FP8 with, and where they came from."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class CalibrationArtifacts:
    """A cell's FP8 calibration, ready to serve. Self-describing: read this, not the cache.

    Serving with INC (Gaudi, or any vLLM that has INC's `convert`): export
    `QUANT_CONFIG=<quant_config>` (`artifacts.env`) and run
    `vllm serve ... --quantization inc --kv-cache-dtype fp8_inc` at `tp`/`ep` (`world` ranks).
    The config is calibrate_model.sh's `maxabs_quant_<device>.json` (mode QUANTIZE,
    `dump_stats_path = <measurement_dir>/inc_output`). INC then loads, for rank r of `world`,
    `inc_output_hooks_maxabs_<r>_<world>.npz` (ranges) and, if present,
    `inc_output_hooks_maxabs_<METHOD>_<r>_<world>.npz` (scales; otherwise it computes and
    writes them). On the cpu backend the config also carries `use_qdq: true`, the CPU-valid
    `scale_method` and, for a g2/g3 target, `device_for_scales`.

    Fake-quant (Q/DQ) serving without INC: per rank, `scale_files[r]` (JSON, `Mode: "Scale"`)
    holds for every node `inputs` (list of input scales), `outputs` and `params.weight` (the
    weight scale); the value is `x_q = clamp(x / scale)` rounded to FP8 e4m3 then `* scale`.
    `range_files[r]` hold the measured max-abs (`Mode: "DynamicRange"`). Node names are vLLM's
    module names (`model.layers.<i>.self_attn.qkv_proj`, `.o_proj`, `.mlp.gate_up_proj`,
    `.mlp.down_proj`, `lm_head`; MoE: `.mlp.gate` router, `.mlp.experts.moe_op` with
    `outputs[1:]` (ranges) / `inputs[1:]` (scales) per local expert, and
    `.mlp.experts.moe_op.w13_list.<i>` / `w2_list.<i>` per local expert; vLLM's Mixtral names
    the block `block_sparse_moe` where these files say `mlp`). With `world` > 1, rank r holds the
    shard (and, for MoE, local experts `[r*E/world, (r+1)*E/world)`) vLLM's rank r holds.

    Device: scales are valid only for `device` (`cpu`, `g2` or `g3`); Gaudi2 and Gaudi3 full
    scales differ (240 vs 448), so never serve g3 scales on g2.

    Provenance: the measurement ran at `calibrated_tp`/`calibrated_ep` (`calibrated_world`
    ranks) in `source_dir`; `derived` says whether this set was made from it by
    `derivation` (e.g. `("unify -r 1 -u -s", "postprocess", "expand -w 2")`). `key` is the
    calibration cache key's digest; `cache_entry` the directory holding `key.json`/`done.json`.
    """

    cell_id: str
    model: str  # calibrate_model.sh's folder name
    device: str  # scale target: cpu | g2 | g3
    backend: str
    quant_config: Path  # QUANT_CONFIG for serving this set
    measure_config: Path
    measurement_dir: Path
    dump_stats_path: Path  # <measurement_dir>/inc_output
    tp: int
    ep: int
    world: int  # ranks = files per kind
    range_files: tuple[Path, ...]
    scale_files: tuple[Path, ...]  # empty when scales are computed at serve time
    scale_method: str  # as in the quant config, e.g. maxabs_hw or maxabs_pow2
    device_for_scales: str | None  # GAUDI2 / GAUDI3 when the cpu backend targets a Gaudi
    use_qdq: bool  # True on CPU: INC emulates FP8 by quantize-dequantize
    key: str
    cache_entry: Path
    calibrated_tp: int
    calibrated_ep: int
    calibrated_world: int
    source_dir: Path  # measurement dir of the calibration itself
    derived: bool
    derivation: tuple[str, ...] = ()

    @property
    def env(self) -> dict[str, str]:
        """Environment a server needs to load these scales through INC."""
        return {"QUANT_CONFIG": str(self.quant_config)}

    def config(self) -> dict[str, Any]:
        """The quant config's content."""
        data: dict[str, Any] = json.loads(self.quant_config.read_text(encoding="utf-8"))
        return data

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly record (paths as strings) for results and reports."""
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = [str(v) for v in value]
            out[name] = value
        return out
