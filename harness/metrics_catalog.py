"""The numeric metrics each stage records: what a matrix gate may name.

A gate on a metric no stage records can never be evaluated (it fails every cell at run time
with "was not measured"): the matrix loader refuses it, naming the known metrics. The names
below are the ones harness/stages/*.py record (tests/unit/test_matrix_bad.py keeps them in
step with the parsers that produce them); a stage that records a new figure adds it here, a
user-written stage test calls `declare`. Text facts (task, smoke_reply, weights ...) are not
listed: a gate compares numbers.
"""

from __future__ import annotations

import difflib
import re

# every stage: the session's wall time of the stage
COMMON = ("stage_wall_s",)

# collectives: the headline (largest size) under the backend's names, each size as `name@32m`
COLLECTIVES_BANDWIDTH = {
    "cpu": ("algbw_gbps", "busbw_gbps"),  # gloo benchmark (backends/cpu/collectives.py)
    "gaudi": ("algo_bandwidth_gbps", "nw_bandwidth_gbps"),  # hccl_demo's names
}
# throughput: vLLM bench's keys, each suffixed `@c<concurrency>` (serving/bench.py)
_LATENCY_STATS = tuple(
    f"{stat}_{lat}_ms"
    for lat in ("ttft", "tpot", "itl", "e2el")
    for stat in ("mean", "median", "p99")
)
THROUGHPUT = (
    "request_throughput",
    "output_throughput",
    "total_token_throughput",
    *_LATENCY_STATS,
    "request_goodput",
    "completed",
    "failed",
    "num_prompts",
    "total_input_tokens",
    "total_output_tokens",
)

STAGE_METRICS: dict[str, tuple[str, ...]] = {
    "preflight": ("checks_pass", "checks_warn", "checks_fail", "checks_skip"),
    "collectives": (
        *COLLECTIVES_BANDWIDTH["cpu"],
        *COLLECTIVES_BANDWIDTH["gaudi"],
        "size_bytes",
        "nranks",
        "nodes",
        "iterations",
    ),
    "calibration": (
        "time_s",
        "calibration_s",
        "derive_s",
        "ensure_s",
        "world",
        "calibrated_world",
        "scale_files",
        "qdq_rel_err",
        "nodes_measured",
        "moe_layers",
        "experts_total",
        "experts_covered",
        "experts_routed",
        "experts_extra",
        "check_warnings",
    ),
    "serving": ("ready_s", "smoke_latency_ms", "smoke_tokens"),
    "accuracy": (
        "exact_match_strict",
        "exact_match_flexible",
        "samples",
        "exact_match_strict_stderr",
        "exact_match_flexible_stderr",
        "exact_match_strict_bf16",
        "exact_match_flexible_bf16",
        "exact_match_strict_delta_vs_bf16",
        "exact_match_flexible_delta_vs_bf16",
    ),
    "throughput": THROUGHPUT,
}

# metrics a stage records once per message size / concurrency, and the suffix form
SUFFIXED: dict[str, tuple[tuple[str, ...], re.Pattern[str], str]] = {
    "collectives": (
        (*COLLECTIVES_BANDWIDTH["cpu"], *COLLECTIVES_BANDWIDTH["gaudi"]),
        re.compile(r"^\d+(?:\.\d+)?[gmkb]$", re.IGNORECASE),
        "a message size such as 32m",
    ),
    "throughput": (THROUGHPUT, re.compile(r"^c[1-9]\d*$"), "a concurrency such as c32"),
}


def declare(stage: str, *names: str) -> None:
    """Add metrics a user-written stage test records (call it from a conftest.py, which pytest
    imports before the matrix is loaded), so matrix gates may name them."""
    if stage not in STAGE_METRICS:
        raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGE_METRICS)}")
    STAGE_METRICS[stage] = (*STAGE_METRICS[stage], *(n for n in names if n not in
                                                      STAGE_METRICS[stage]))


def metric_names(stage: str, backend: str | None = None) -> tuple[str, ...]:
    """The numeric metrics `stage` records (on `backend` when given), COMMON included."""
    names = STAGE_METRICS.get(stage, ())
    if stage == "collectives" and backend in COLLECTIVES_BANDWIDTH:
        other = {n for b, ns in COLLECTIVES_BANDWIDTH.items() if b != backend for n in ns}
        names = tuple(n for n in names if n not in other)
    return (*names, *COMMON)


def gate_problem(stage: str, metric: str, backend: str | None = None) -> str | None:
    """Why a gate on `<stage>.<metric>` can never be evaluated, or None when it can."""
    known = metric_names(stage, backend)
    name, at, suffix = metric.partition("@")
    if at:
        suffixed = SUFFIXED.get(stage)
        if suffixed is None:
            return f"{stage} records no per-size or per-concurrency metric ('@{suffix}')"
        names, pattern, form = suffixed
        if not pattern.match(suffix):
            return f"'@{suffix}' is not {form}"
        if name not in names or name not in known:
            return _unknown(stage, name, [n for n in known if n in names], backend)
        return None
    if name in known:
        return None
    return _unknown(stage, name, known, backend)


def _unknown(stage: str, name: str, known: list[str] | tuple[str, ...], backend: str | None) -> str:
    close = difflib.get_close_matches(name, list(known), n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    where = f"the {stage} stage" + (f" on the {backend} backend" if backend else "")
    return (
        f"{where} records no metric '{name}', so this gate could never be evaluated.{hint} "
        f"Known: {', '.join(known)}"
    )
