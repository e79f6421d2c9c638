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
    """`vllm bench serve` at each concurrency against the cell's server, then the gates."""
    cell, rec, backend = ctx.cell, ctx.recorder, ctx.backend
    settings = cell.settings.throughput
    rec.update(server.facts)
    for concurrency in settings.concurrencies:
        command = backend.bench_command(cell, server.base_url, concurrency, ctx.workdir)
        log = ctx.workdir / f"bench_c{concurrency}.log"
        rec.artifact(f"bench_log@c{concurrency}", log)
        result_path = ctx.workdir / bench_result_name(concurrency)
        try:
            run_client(command, log, settings.timeout_s, server,
                       label=f"throughput {cell.id} c={concurrency}")
            data = load_result(result_path)
            metrics = parse_result(data, concurrency, str(result_path))
        except HarnessError as exc:
            raise failure(cell, ctx.stage, exc) from None
        rec.artifact(f"bench@c{concurrency}", result_path)
        rec.update(metrics)
        failed = metrics.get(f"failed@c{concurrency}", 0)
        if failed:
            raise failure(cell, ctx.stage, HarnessError(
                f"{failed} of {metrics.get(f'num_prompts@c{concurrency}')} benchmark requests "
                f"failed at concurrency {concurrency} (see {log})"
            ))
    ctx.check_gates()
