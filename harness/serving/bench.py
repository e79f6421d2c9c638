"""`vllm bench serve --save-result` JSON -> the throughput stage's metrics.

Names follow vLLM's keys, with the concurrency as a suffix (`p99_ttft_ms@c32`) so one cell's
figures at every concurrency sit side by side and gates can target one or all of them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from harness.errors import HarnessError

LATENCIES = ("ttft", "tpot", "itl", "e2el")
STATS = ("mean", "median", "p99")
THROUGHPUTS = ("request_throughput", "output_throughput", "total_token_throughput")
# Recorded when present (goodput only when the run set an SLO).
OPTIONAL = ("request_goodput",)
COUNTS = ("completed", "failed", "num_prompts", "total_input_tokens", "total_output_tokens")


class BenchResultError(HarnessError):
    """A benchmark result file is missing, unreadable or lacks a required figure."""


def metric_keys() -> tuple[str, ...]:
    """Every figure the stage records per concurrency (before the `@c<N>` suffix)."""
    keys = list(THROUGHPUTS)
    keys += [f"{stat}_{lat}_ms" for lat in LATENCIES for stat in STATS]
    return tuple(keys)


def load_result(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BenchResultError(
            f"{path}: no result file; `vllm bench serve --save-result` did not write it "
            "(see the benchmark log)"
        ) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise BenchResultError(f"{path}: unreadable benchmark result ({exc})") from None
    if not isinstance(data, dict):
        raise BenchResultError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def parse_result(data: dict[str, Any], concurrency: int, source: str = "result") -> dict[str, Any]:
    """Metrics of one run, suffixed `@c<concurrency>`. A missing required figure is an error."""
    suffix = f"@c{concurrency}"
    out: dict[str, Any] = {}
    data = _normalized(data)
    missing = [k for k in metric_keys() if k not in data]
    if missing:
        raise BenchResultError(
            f"{source}: missing {', '.join(missing)} (is it a `vllm bench serve` result saved "
            "with --percentile-metrics ttft,tpot,itl,e2el --metric-percentiles 50,99?)"
        )
    for key in metric_keys():
        out[key + suffix] = _number(data[key], key, source)
    for key in OPTIONAL:  # null when the run set no SLO
        if data.get(key) is not None:
            out[key + suffix] = _number(data[key], key, source)
    for key in COUNTS:
        if key in data:
            out[key + suffix] = int(data[key])
    if data.get("max_concurrency") not in (None, concurrency):
        raise BenchResultError(
            f"{source}: ran at max_concurrency {data['max_concurrency']}, expected {concurrency}"
        )
    return out


def _normalized(data: dict[str, Any]) -> dict[str, Any]:
    """The vllm-fork's benchmarks/benchmark_serving.py result (@016b6bd, lines 725-741, 968)
    spells goodput `request_goodput:` and has no `failed`: read it as `vllm bench serve`'s."""
    data = dict(data)
    if "request_goodput:" in data and "request_goodput" not in data:
        data["request_goodput"] = data.pop("request_goodput:")
    if "failed" not in data and isinstance(data.get("num_prompts"), int) and isinstance(
        data.get("completed"), int
    ):
        data["failed"] = data["num_prompts"] - data["completed"]
    return data


def _number(value: Any, key: str, source: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BenchResultError(f"{source}: {key} is not a number ({value!r})") from None
    if math.isnan(number):
        raise BenchResultError(f"{source}: {key} is NaN (no request completed?)")
    return round(number, 4)
