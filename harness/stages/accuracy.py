"""Accuracy stage: lm-eval gsm8k (`local-completions`) against the cell's running server.

Gated absolutely (exact_match >= expected - tolerance, or >= min) and, for an FP8 cell, against
the BF16 cell of the same model, device and parallelism (`max_drop_vs_bf16`). Both gsm8k
metrics (strict and flexible extraction) and the sample count are recorded; lm-eval's output
folder (results and per-sample logs) is kept as an artifact.
"""

from __future__ import annotations

from harness.errors import HarnessError
from harness.process import CommandFailed
from harness.serving.client import run_client
from harness.serving.commands import LM_EVAL_OUTPUT
from harness.serving.lmeval import latest_results_file
from harness.serving.lmeval import parse_results
from harness.serving.server import ServerFailed
from harness.stages.base import StageContext
from harness.stages.serving import ServerHandle
from harness.stages.serving import failure


def run(ctx: StageContext, server: ServerHandle) -> None:
    """lm-eval against the cell's server; record both gsm8k metrics, then gate them."""
    cell, rec, backend = ctx.cell, ctx.recorder, ctx.backend
    settings = cell.settings.accuracy
    rec.update(server.facts)
    try:
        task = backend.accuracy_task(cell, ctx.workdir)
        command = backend.accuracy_command(cell, server.base_url, task, ctx.workdir)
        rec.metric("task", task.name)
        rec.metric("dataset", task.dataset)
        if task.include_path is not None:
            rec.artifact("task", task.include_path)
        log = ctx.workdir / "lm_eval.log"
        rec.artifact("lm_eval_log", log)
        run_client(command, log, settings.timeout_s, server, label=f"accuracy {cell.id}",
                   unit="problems")
        rec.artifact("lm_eval_output", ctx.workdir / LM_EVAL_OUTPUT)
        result = parse_results(latest_results_file(ctx.workdir / LM_EVAL_OUTPUT), task.name)
    except (ServerFailed, CommandFailed) as exc:
        raise failure(cell, ctx.stage, exc) from None
    except HarnessError as exc:
        raise failure(cell, ctx.stage, exc) from None
    rec.update(result.metrics())
    reference = ctx.bf16_reference() if cell.is_fp8 else None
    bf16 = reference.metrics if reference else None
    if bf16 is not None:
        for name in ("exact_match_strict", "exact_match_flexible"):
            if name in bf16:
                rec.metric(f"{name}_bf16", bf16[name])
                rec.metric(f"{name}_delta_vs_bf16", round(rec.metrics[name] - bf16[name], 4))
    ctx.check_gates(reference)
