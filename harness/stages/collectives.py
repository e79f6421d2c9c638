"""Collectives: all_reduce bandwidth across the cell's ranks, gated on the matrix's floor.

The backend gives the commands (hccl_demo on Gaudi, the gloo benchmark on CPU), one per node
for multi-node cells, and reads its own output; this stage runs them together (here, or one per
Ray node in the cell's placement group), records algbw and busbw per message size under the
backend's metric names, and fails on a wrong reduce, a failed command or a gate.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from harness.cell import Stage
from harness.cluster import UNKNOWN_HEAD
from harness.collectives.bandwidth import BandwidthRow
from harness.collectives.bandwidth import headline
from harness.collectives.launch import CommandOutput
from harness.collectives.launch import has_nodes
from harness.collectives.launch import rounds
from harness.collectives.launch import run_local
from harness.collectives.launch import run_on_nodes
from harness.errors import StageError
from harness.process import tail
from harness.results import write_atomic
from harness.stages.base import StageContext
from harness.stages.base import StageSkipped

HEAD_HINT = (
    "set backend_options.head_ip (or ray_address) in the matrix, or RAY_ADDRESS / VLLM_HOST_IP "
    "in the environment, to the head node's IP (seed 003: 192.168.1.101)"
)


def record(ctx: StageContext, rows: Sequence[BandwidthRow], verified: bool | None) -> None:
    """Headline (largest size) under the plain names, every size as `<name>@<size>`."""
    algbw, busbw = ctx.backend.collectives_metric_names
    top = headline(rows)
    ctx.recorder.update(
        {
            algbw: round(top.algbw_gbps, 6),
            busbw: round(top.busbw_gbps, 6),
            "size_bytes": top.size_bytes,
            "nranks": top.nranks,
            "nodes": ctx.backend.collectives_nodes(ctx.cell),
            "iterations": top.iterations,
        }
    )
    if verified is not None:
        ctx.recorder.metric("data_verified", verified)
    if len(rows) > 1:
        for row in rows:
            ctx.recorder.metric(f"{algbw}@{row.size_label}", round(row.algbw_gbps, 6))
            ctx.recorder.metric(f"{busbw}@{row.size_label}", round(row.busbw_gbps, 6))
    path = ctx.workdir / "bandwidth.json"
    write_atomic(path, json.dumps([r.as_dict() for r in rows], indent=2))
    ctx.recorder.artifact("bandwidth", path)


def _run_all(ctx: StageContext) -> list[CommandOutput]:
    backend, cell = ctx.backend, ctx.cell
    commands = backend.plan(cell, Stage.COLLECTIVES, ctx.workdir)
    if not commands:
        raise StageSkipped(f"the {backend.name} backend has no collective benchmark")
    if any(UNKNOWN_HEAD in part for c in commands for part in (*c.argv, *c.env.values())):
        raise StageError(cell.id, "collectives", "the head node's IP is not known", HEAD_HINT)
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    timeout = cell.settings.collectives.timeout_s
    groups = rounds(commands)
    outputs: list[CommandOutput] = []
    for k, group in enumerate(groups):
        where = ctx.workdir / f"round{k}" if len(groups) > 1 else ctx.workdir
        if has_nodes(group):
            outputs += run_on_nodes(
                group,
                backend.ray_cluster(cell),
                backend.ray_placement(cell, backend.collectives_nodes(cell)),
                where,
                ctx.env,
                timeout,
                backend.collectives_collect(cell, ctx.workdir),
            )
        else:
            outputs += run_local(group, where, ctx.env, timeout)
    return outputs


def run(ctx: StageContext) -> None:
    """Run the benchmark, keep the logs and figures, then apply the gates."""
    backend, cell = ctx.backend, ctx.cell
    hint = backend.collectives_hint
    outputs = _run_all(ctx)
    for out in outputs:
        ctx.recorder.artifact(out.log_path.relative_to(ctx.workdir).as_posix(), out.log_path)
    rows, verified = backend.collectives_figures(cell, ctx.workdir, outputs)
    if rows:
        record(ctx, rows, verified)
    failed = [o for o in outputs if not o.ok]
    if verified is False:
        wrong = [r.size_label for r in rows if r.verified is False] or ["some sizes"]
        raise StageError(
            cell.id,
            "collectives",
            f"all_reduce gave wrong data ({', '.join(wrong)}): the reduce is broken, not slow",
            "see the logs for the first wrong element per rank; rerun preflight on the nodes",
        )
    if failed:
        first = failed[0]
        status = "timed out" if first.returncode is None else f"exited with {first.returncode}"
        raise StageError(
            cell.id,
            "collectives",
            f"`{first.command.shell()}` {status}; last lines of {first.log_path.name}:\n"
            + tail(first.log_path, 15),
            hint,
        )
    if not rows:
        raise StageError(
            cell.id,
            "collectives",
            f"no bandwidth figures in {', '.join(o.log_path.name for o in outputs)}",
            hint,
        )
    ctx.check_gates()
