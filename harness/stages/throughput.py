"""Throughput stage: `vllm bench serve` at each of the matrix's concurrencies.

Each run saves vLLM's JSON result (kept as an artifact); the stage records request, output and
total token throughput and mean/median/p99 TTFT, TPOT, ITL and E2EL, suffixed `@c<N>`, plus
goodput when the matrix sets an SLO. Gates: `throughput.output_throughput: {min}`,
`throughput.p99_ttft_ms: {max}` ... apply to every concurrency unless a `...@c32` key narrows
them. Figures are recorded as each concurrency finishes, so a later failure keeps them.
"""

from __future__ import annotations

from harness.errors import HarnessError
from harness.serving.bench import load_result
from harness.serving.bench import parse_result
from harness.serving.client import run_client
from harness.serving.commands import bench_result_name
from harness.stages.base import StageContext
from harness.stages.serving import ServerHandle
from harness.stages.serving import failure


def run(ctx: StageContext, server: ServerHandle) -> None:
    """`vllm bench serve` at each concurrency against the cell's server, then the gates.

    With `repeats: N` each concurrency runs N times (repeat k > 0 writes under `repeat<k>/`)
    and the figures are the median, with `_min`, `_max`, `_ci95_low/high` beside them."""
    cell, rec = ctx.cell, ctx.recorder
    settings = cell.settings.throughput
    rec.update(server.facts)
    for concurrency in settings.concurrencies:
        runs = [
            _one_run(ctx, server, concurrency, k, settings.repeats)
            for k in range(settings.repeats)
        ]
        if len(runs) > 1:
            from harness.stats.repeats import combine_repeats  # scipy: only when repeating

            rec.update(combine_repeats(runs))
            rec.metric(f"repeats@c{concurrency}", len(runs))
    ctx.check_gates()


def _one_run(
    ctx: StageContext, server: ServerHandle, concurrency: int, k: int, repeats: int
) -> dict[str, float]:
    """One benchmark run; its figures recorded at once (a later failure keeps them)."""
    cell, rec = ctx.cell, ctx.recorder
    workdir = ctx.workdir if k == 0 else ctx.workdir / f"repeat{k}"
    tag = f"c{concurrency}" if repeats == 1 else f"c{concurrency}#{k}"
    command = ctx.backend.bench_command(cell, server.base_url, concurrency, workdir)
    log = workdir / f"bench_c{concurrency}.log"
    rec.artifact(f"bench_log@{tag}", log)
    result_path = workdir / bench_result_name(concurrency)
    try:
        run_client(command, log, cell.settings.throughput.timeout_s, server,
                   label=f"throughput {cell.id} {tag}")
        data = load_result(result_path)
        metrics = parse_result(data, concurrency, str(result_path))
    except HarnessError as exc:
        raise failure(cell, ctx.stage, exc) from None
    rec.artifact(f"bench@{tag}", result_path)
    rec.update(metrics)
    failed = metrics.get(f"failed@c{concurrency}", 0)
    if failed:
        raise failure(cell, ctx.stage, HarnessError(
            f"{failed} of {metrics.get(f'num_prompts@c{concurrency}')} benchmark requests "
            f"failed at concurrency {concurrency} (see {log})"
        ))
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
