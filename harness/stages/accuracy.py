"""Accuracy stage: lm-eval gsm8k (`local-completions`) against the cell's running server.

Gated absolutely (exact_match >= expected - tolerance, or >= min) and, for an FP8 cell, against
the BF16 cell of the same model, device and parallelism (`max_drop_vs_bf16`). Both gsm8k
metrics (strict and flexible extraction) and the sample count are recorded; lm-eval's output
folder (results and per-sample logs) is kept as an artifact.
"""

from __future__ import annotations

from harness.errors import HarnessError
from harness.gates import GateOutcome
from harness.process import CommandFailed
from harness.results import StageResult
from harness.serving.client import run_client
from harness.serving.commands import LM_EVAL_OUTPUT
from harness.serving.lmeval import latest_results_file
from harness.serving.lmeval import parse_results
from harness.serving.server import ServerFailed
from harness.stages.base import StageContext
from harness.stages.serving import ServerHandle
from harness.stages.serving import failure

ACCURACY_METRICS = ("exact_match_strict", "exact_match_flexible")


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
    from harness.stats.proportion import interval_metrics  # scipy: not at collection time

    for name in ACCURACY_METRICS:  # n and the Wilson 95% interval beside each figure
        rec.update(interval_metrics(name, float(rec.metrics[name]), int(result.samples)))
    judged = _paired_fp8_gates(ctx)
    reference = ctx.bf16_reference() if cell.is_fp8 else None
    bf16 = reference.metrics if reference else None
    if bf16 is not None:
        for name in ACCURACY_METRICS:
            if name in bf16:
                rec.metric(f"{name}_bf16", bf16[name])
                rec.metric(f"{name}_delta_vs_bf16", round(rec.metrics[name] - bf16[name], 4))
    ctx.check_gates(reference, judged)


def _paired_fp8_gates(ctx: StageContext) -> list[GateOutcome]:
    """An FP8 cell's `max_drop_vs_bf16` gates judged per problem against its BF16 reference
    (exact McNemar on lm-eval's logged samples; harness.stats), not by point estimates."""
    if not ctx.cell.is_fp8:
        return []
    fp8 = StageResult(
        cell=ctx.cell.id, stage="accuracy", status="passed",
        metrics=dict(ctx.recorder.metrics), artifacts=dict(ctx.recorder.artifacts),
    )
    return [
        ctx.references.fp8_verdict(fp8, key.split(".", 1)[1], spec)
        for key, spec in ctx.cell.gates.items()
        if key.startswith("accuracy.") and spec.max_drop_vs_bf16 is not None
    ]
