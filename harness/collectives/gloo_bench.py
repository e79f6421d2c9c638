"""Gloo all_reduce bandwidth over local rank processes: the CPU backend's hccl_demo.

Shaped like hccl_demo's runner: one command per node starts that node's ranks, each node gets
`--node_id`, and the figures are the same (algbw, and busbw = algbw x 2(n-1)/n per message
size). The data are checked after the reduce: rank r sends (r + 1) + (i mod 7) at index i, so
every element of the result is known exactly.

    python -m harness.collectives.gloo_bench --test all_reduce --nranks 2 --ranks_per_node 2 \
        --node_id 0 --sizes 1m,4m,16m --loop 1000 --max_seconds 1 \
        --init_method file:///tmp/run/gloo.rendezvous --json /tmp/run/gloo_bench.json

The timed loop runs `--loop` iterations per size, or fewer when `--max_seconds` would be
exceeded (rank 0 decides from a probe iteration and broadcasts the count, so every rank runs
the same number of collectives). Exit status: 0 ok, 3 data mismatch, 1 any other failure.
torch is imported only in the rank processes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

from harness.collectives.bandwidth import BandwidthRow
from harness.collectives.bandwidth import bus_factor
from harness.collectives.bandwidth import format_size
from harness.collectives.bandwidth import parse_size
from harness.fileio import write_atomic

EXIT_MISMATCH = 3
PATTERN = 7  # element i of rank r holds (r + 1) + (i mod PATTERN)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m harness.collectives.gloo_bench")
    parser.add_argument("--test", default="all_reduce", choices=["all_reduce"])
    parser.add_argument("--nranks", type=int, required=True, help="Ranks over all nodes")
    parser.add_argument("--ranks_per_node", type=int, required=True)
    parser.add_argument("--node_id", type=int, default=0)
    parser.add_argument("--sizes", required=True, help="Comma-separated sizes, e.g. 1m,4m,16m")
    parser.add_argument("--loop", type=int, default=1000, help="Timed iterations per size")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--max_seconds", type=float, default=0.0, help="0: always --loop")
    parser.add_argument("--init_method", required=True, help="file:///path or tcp://host:port")
    parser.add_argument("--timeout_s", type=float, default=300.0)
    parser.add_argument("--json", type=Path, default=None, help="Figures (written by rank 0)")
    args = parser.parse_args(argv)
    if args.nranks < 2:
        parser.error(f"--nranks {args.nranks}: an all_reduce benchmark needs at least 2 ranks")
    if args.ranks_per_node < 1 or args.nranks % args.ranks_per_node:
        parser.error(f"--ranks_per_node {args.ranks_per_node} must divide --nranks {args.nranks}")
    nodes = args.nranks // args.ranks_per_node
    if not 0 <= args.node_id < nodes:
        parser.error(f"--node_id {args.node_id} is not one of the {nodes} nodes")
    return args


def expected_sum(nranks: int, numel: int) -> Any:  # torch is imported lazily
    """What every rank must hold after the all_reduce of the pattern."""
    import torch

    pattern = torch.arange(numel, dtype=torch.int64) % PATTERN
    return (pattern * nranks + nranks * (nranks + 1) // 2).to(torch.float32)


def _rank_main(rank: int, args: argparse.Namespace, sizes: list[int]) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=args.init_method,
        rank=rank,
        world_size=args.nranks,
        timeout=datetime.timedelta(seconds=args.timeout_s),
    )
    rows, bad = [], []
    try:
        for size in sizes:
            row, mismatch = _one_size(torch, dist, rank, args, size)
            rows.append(row)
            if mismatch:
                bad.append(mismatch)
    finally:
        dist.destroy_process_group()
    if rank == 0:
        _report(args, rows)
    for line in bad:
        print(line, file=sys.stderr, flush=True)
    if any(not r.verified for r in rows):
        sys.exit(EXIT_MISMATCH)


def _one_size(torch: Any, dist: Any, rank: int, args: argparse.Namespace, size: int) -> Any:
    numel = max(1, size // 4)
    buf = torch.zeros(numel, dtype=torch.float32)
    for _ in range(args.warmup):
        dist.all_reduce(buf)
    dist.barrier()
    start = time.perf_counter()
    dist.all_reduce(buf)
    probe = time.perf_counter() - start
    iters = torch.tensor([args.loop], dtype=torch.int64)
    if rank == 0 and args.max_seconds > 0:
        iters[0] = max(3, min(args.loop, int(args.max_seconds / max(probe, 1e-6))))
    dist.broadcast(iters, src=0)
    n = int(iters[0])
    dist.barrier()
    start = time.perf_counter()
    for _ in range(n):
        dist.all_reduce(buf)
    elapsed = torch.tensor([(time.perf_counter() - start) / n], dtype=torch.float64)
    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # the slowest rank sets the figure
    data = (torch.arange(numel, dtype=torch.int64) % PATTERN + rank + 1).to(torch.float32)
    dist.all_reduce(data)
    want = expected_sum(args.nranks, numel)
    wrong = int((data != want).sum())
    ok = torch.tensor([0 if wrong else 1], dtype=torch.int64)
    dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    mismatch = ""
    if wrong:
        first = int((data != want).nonzero()[0])
        mismatch = (
            f"rank {rank}: all_reduce of {format_size(size)} is wrong in {wrong} of {numel} "
            f"elements (first at index {first}: got {float(data[first])}, "
            f"want {float(want[first])})"
        )
    seconds = float(elapsed[0])
    algbw = size / seconds / 1e9
    row = BandwidthRow(
        size_bytes=size,
        algbw_gbps=algbw,
        busbw_gbps=algbw * bus_factor(args.test, args.nranks),
        nranks=args.nranks,
        count=numel,
        dtype="float",
        iterations=n,
        time_us=seconds * 1e6,
        verified=bool(ok[0]),
        source="gloo_bench",
    )
    return row, mismatch


def _report(args: argparse.Namespace, rows: list[BandwidthRow]) -> None:
    print(f"[gloo_bench] {args.test} nranks={args.nranks} backend=gloo dtype=float", flush=True)
    print(
        f"{'size':>12} {'count':>10} {'iters':>6} {'time(us)':>12} "
        f"{'algbw(GB/s)':>12} {'busbw(GB/s)':>12} {'check':>6}"
    )
    for r in rows:
        print(
            f"{r.size_bytes:>12} {r.count:>10} {r.iterations:>6} {r.time_us:>12.1f} "
            f"{r.algbw_gbps:>12.4f} {r.busbw_gbps:>12.4f} {'ok' if r.verified else 'WRONG':>6}",
            flush=True,
        )
    if args.json is not None:
        payload = {
            "tool": "gloo_bench",
            "test": args.test,
            "nranks": args.nranks,
            "backend": "gloo",
            "rows": [r.as_dict() for r in rows],
        }
        write_atomic(args.json, json.dumps(payload, indent=2))


def read_figures(path: Path) -> list[BandwidthRow]:
    """Rows of a `--json` file written by rank 0."""
    data = json.loads(path.read_text())
    fields = set(BandwidthRow.__dataclass_fields__)
    return [BandwidthRow(**{k: v for k, v in row.items() if k in fields}) for row in data["rows"]]


def main(argv: list[str] | None = None) -> int:
    """Start this node's ranks, wait for all of them; the first failure stops the others."""
    args = parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    ctx = mp.get_context("spawn")
    first = args.node_id * args.ranks_per_node
    procs = [
        ctx.Process(target=_rank_main, args=(first + i, args, sizes), name=f"rank{first + i}")
        for i in range(args.ranks_per_node)
    ]
    for proc in procs:
        proc.start()
    deadline = time.monotonic() + args.timeout_s + 30
    status = 0
    try:
        while any(p.is_alive() for p in procs):
            failed = [p for p in procs if p.exitcode not in (None, 0)]
            if failed or time.monotonic() > deadline:
                status = (failed[0].exitcode or 1) if failed else 1
                why = f"{failed[0].name} exited with {status}" if failed else "timed out"
                print(f"[gloo_bench] {why}; stopping the other ranks", file=sys.stderr)
                break
            time.sleep(0.05)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
            proc.join(5)
    codes = [p.exitcode for p in procs]
    if status == 0 and any(codes):
        status = next(c for c in codes if c)
    return EXIT_MISMATCH if status == EXIT_MISMATCH else (1 if status else 0)


if __name__ == "__main__":
    sys.exit(main())
