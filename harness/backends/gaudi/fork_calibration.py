"""Calibration on the vllm-fork stack: the fork's own `scripts/run_inc_calib.sh` (seed 003).

HabanaAI/vllm-fork deepseek_r1 @016b6bd, scripts/run_inc_calib.sh: `--model`, `--wd` (world
size, default 8), `--nprompts` (default 512) (lines 24-48); it removes and rewrites
`./scripts/nc_workspace_measure_kvcache` (57-61) through QUANT_CONFIG
`scripts/quant_configs/inc_measure_with_fp8kv_config.json` (52), whose dump_stats_path is
`./scripts/nc_workspace_measure_kvcache/inc_measure_output`, and measures with
`run_example_tp.py --tp_size W --ep_size W --dataset pile` (88-97): the dataset is fixed and
the layout is TP = EP = W. The set is then copied out of the checkout (the next run deletes
it) into the harness's cache entry under the harness's file prefix.
"""

from __future__ import annotations

from pathlib import Path

from harness.calibration.layout import PREFIX
from harness.calibration.recipe import CalibrationJob
from harness.calibration.recipe import Derivation
from harness.calibration.recipe import Recipe
from harness.calibration.recipe import Step
from harness.errors import HarnessError
from harness.process import Command

SCRIPT = "scripts/run_inc_calib.sh"
WORKSPACE = "scripts/nc_workspace_measure_kvcache"
FORK_PREFIX = "inc_measure_output"
MEASURE_CONFIG = "scripts/quant_configs/inc_measure_with_fp8kv_config.json"
QUANT_CONFIG = "scripts/quant_configs/inc_quant_per_channel_with_fp8kv_config.json"
MEASURE_KEY = {"vllm-fork": f"{MEASURE_CONFIG}@016b6bd", "dataset": "pile"}
QUANT_KEY = {"vllm-fork": f"{QUANT_CONFIG}@016b6bd"}
CARDS_PER_NODE = 8


def recipe(job: CalibrationJob, derivation: Derivation | None) -> Recipe:
    """run_inc_calib.sh at the cell's own layout, then the copy into the cache entry."""
    if derivation is not None:
        raise HarnessError(
            f"{job.model}: the vllm-fork procedure has no unify/expand step (seed 003 measures "
            f"at the serving layout: run_inc_calib.sh --wd <TP>); drop calibrate_tp, "
            "calibrate_ep, unify_ranks and expand for this cell, or serve it on vllm-gaudi"
        )
    if job.ep not in (1, job.tp):
        raise HarnessError(
            f"{job.model}: run_inc_calib.sh measures at TP = EP = --wd; tp{job.tp}/ep{job.ep} "
            "is not such a layout"
        )
    fork = Path(job.fork_dir or "/workspace/vllm-fork")
    node = 0 if job.tp > CARDS_PER_NODE else None
    layout = job.layout
    env = dict(job.env)
    if job.tp > CARDS_PER_NODE:
        env["PT_HPU_ENABLE_LAZY_COLLECTIVES"] = "true"  # set_head_node.sh:41
    measure = Command(
        ("bash", SCRIPT, "--model", job.source, "--wd", str(job.tp),
         "--nprompts", str(job.samples)),
        env=env, cwd=str(fork), node=node,
        description=f"[stack vllm-fork] run_inc_calib.sh: measure at TP=EP={job.tp} on pile "
        "(the script's fixed dataset; settings.calibration.dataset is not used)"
        + ("; it sets QUANT_CONFIG for the head's process only and the fork's Ray executor "
           "copies VLLM_*/PT_* only (ray_distributed_executor.py:385-392): export "
           f"QUANT_CONFIG={fork / MEASURE_CONFIG} on every node before `ray start`"
           if node is not None else ""),
    )
    src, dst = fork / WORKSPACE, layout.measurement_dir
    copy = Command(
        ("sh", "-c", f'mkdir -p "{dst}" && for f in "{src}"/{FORK_PREFIX}_*; do '
         f'cp "$f" "{dst}/{PREFIX}${{f##*/{FORK_PREFIX}}}"; done'),
        cwd=str(fork), node=node,
        description=f"copy the set out of the checkout into the cache entry as {PREFIX}_*",
    )
    quant = layout.model_dir / f"inc_quant_fork_{layout.device}.json"
    return Recipe(
        (Step("run_inc_calib.sh", (measure,)), Step("copy-measurements", (copy,))),
        dst, quant, job.tp, quant_copy=(fork / QUANT_CONFIG, quant, dst / PREFIX),
    )
