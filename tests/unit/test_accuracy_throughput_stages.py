"""The accuracy and throughput stages' logic: recorded tool outputs in, metrics and gates out.

The backend is a stand-in whose commands copy recorded lm-eval / `vllm bench serve` outputs
where the real tools write them (a tiny Python process each), so the stage code runs as it does
against vLLM: command, watched client, parser, metrics, gates.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from harness.cell import Stage
from harness.errors import StageError
from harness.gates import GateSpec
from harness.matrix import load_matrix
from harness.process import Command
from harness.references import Reference
from harness.references import judge_fp8
from harness.results import StageResult
from harness.serving.commands import AccuracyTask
from harness.stages import accuracy
from harness.stages import throughput
from harness.stages.base import GateFailed
from harness.stages.base import StageContext

DATA = Path(__file__).resolve().parents[1] / "data" / "vllm"


def _copy(src: Path, dst: Path) -> Command:
    code = (
        "import shutil, sys, pathlib; d = pathlib.Path(sys.argv[2]);"
        "d.parent.mkdir(parents=True, exist_ok=True); shutil.copy(sys.argv[1], d)"
    )
    return Command((sys.executable, "-c", code, str(src), str(dst)), {}, "recorded output")


class StandInBackend:
    name = "stand-in"

    def __init__(self, results: Path = DATA / "lm_eval_results_gsm8k_synthetic.json",
                 bench: dict[int, Path] | None = None) -> None:
        self.results = results
        self.bench = bench or {}

    def accuracy_task(self, cell, workdir, write=True):
        return AccuracyTask("gsm8k_synthetic", workdir / "task", "synthetic")

    def accuracy_command(self, cell, base_url, task, workdir):
        dst = workdir / "lm_eval_output" / "model" / "results_2026-11-23T16-40-07.json"
        return _copy(self.results, dst)

    def bench_command(self, cell, base_url, concurrency, workdir):
        return _copy(self.bench[concurrency], workdir / f"bench_c{concurrency}.json")


class LiveServer:
    base_url = "http://127.0.0.1:1"
    facts = {"weights": "bf16", "kv_cache": "auto", "emulated": "none"}

    def check_alive(self) -> None:
        return None


def _ctx(tmp_path, stage, gates, backend, bf16=None, fp8=True):
    cells = {c.id: c for c in load_matrix("smoke-cpu").cells}
    cell = cells["tiny-llama/cpu/tp1/fp8-kv-fp8" if fp8 else "tiny-llama/cpu/tp1/bf16-kv-auto"]
    cell = dataclasses.replace(cell, gates={k: GateSpec(**v) for k, v in gates.items()})
    return StageContext(
        cell=cell, stage=stage, backend=backend, workdir=tmp_path, cache_dir=tmp_path,
        references=FixedReference(bf16),
    )


class FixedReference:
    """The BF16 twin's metrics as a run's store would give them (None: not in the run)."""

    def __init__(self, metrics):
        self.metrics = metrics

    def bf16_for(self, cell, stage):
        return Reference(self.metrics, "test", "" if self.metrics else "no twin in this test")

    def fp8_verdict(self, fp8, name, spec):
        """The real verdict against a twin record holding these metrics (20 problems)."""
        twin = None
        if self.metrics is not None:
            twin = StageResult(cell="twin", stage="accuracy", status="passed",
                               metrics={**self.metrics, "samples": 20})
        return judge_fp8(fp8, twin, Path("."), name, spec)


def test_accuracy_records_both_metrics_the_samples_and_the_bf16_comparison(tmp_path):
    bf16 = {"exact_match_strict": 0.05, "exact_match_flexible": 0.0}
    gates = {"accuracy.exact_match_strict": {"min": 0.0, "max_drop_vs_bf16": 0.1}}
    ctx = _ctx(tmp_path, Stage.ACCURACY, gates, StandInBackend(), bf16)
    accuracy.run(ctx, server=LiveServer())
    m = ctx.recorder.metrics
    assert (m["exact_match_strict"], m["exact_match_flexible"], m["samples"]) == (0.0, 0.0, 20)
    assert m["exact_match_strict_bf16"] == 0.05
    assert m["exact_match_strict_delta_vs_bf16"] == -0.05
    assert m["dataset"] == "synthetic" and m["emulated"] == "none"
    # the drop gate is a statistical verdict against the twin (issue 13), not a point compare
    assert [g.bound for g in ctx.recorder.gates] == [
        ">= 0", "drop <= 0.1 or not significant (alpha 0.05)"
    ]
    assert all(g.passed for g in ctx.recorder.gates)
    assert (m["exact_match_strict_n"], m["exact_match_strict_ci95_low"]) == (20, 0.0)
    assert ctx.recorder.artifacts["lm_eval_output"] == str(tmp_path / "lm_eval_output")


def test_an_fp8_cell_that_drops_too_far_below_bf16_fails_its_gate(tmp_path):
    bf16 = {"exact_match_strict": 0.5}
    gates = {"accuracy.exact_match_strict": {"max_drop_vs_bf16": 0.1}}
    ctx = _ctx(tmp_path, Stage.ACCURACY, gates, StandInBackend(), bf16)
    with pytest.raises(GateFailed, match=r"exact_match_strict FP8 0 \(n=20\) vs BF16 0.5 \(n=20\)"
                       r".*significantly worse, by more than allowed"):
        accuracy.run(ctx, server=LiveServer())
    assert ctx.recorder.metrics["exact_match_strict"] == 0.0  # the figure survives the failure


def test_the_absolute_gate_is_one_sided_expected_minus_tolerance(tmp_path):
    gates = {"accuracy.exact_match_flexible": {"expected": 0.05, "tolerance": 0.05}}
    ctx = _ctx(tmp_path, Stage.ACCURACY, gates, StandInBackend(), fp8=False)
    accuracy.run(ctx, server=LiveServer())  # 0.0 >= 0.05 - 0.05
    assert ctx.recorder.gates[0].passed


def test_lm_eval_output_of_another_task_fails_the_stage_naming_the_file(tmp_path):
    ctx = _ctx(tmp_path, Stage.ACCURACY, {}, StandInBackend(results=DATA / "bench_serve_c1.json"))
    with pytest.raises(StageError, match="expected one task|no results for task"):
        accuracy.run(ctx, server=LiveServer())


def test_throughput_records_every_concurrency_with_its_suffix_and_gates_each(tmp_path):
    backend = StandInBackend(bench={1: DATA / "bench_serve_c1.json",
                                    4: DATA / "bench_serve_c4_goodput.json"})
    gates = {"throughput.output_throughput": {"min": 5},
             "throughput.p99_ttft_ms": {"max": 20000},
             "throughput.request_goodput@c4": {"min": 1}}
    ctx = _ctx(tmp_path, Stage.THROUGHPUT, gates, backend, fp8=False)
    throughput.run(ctx, server=LiveServer())
    m = ctx.recorder.metrics
    assert m["output_throughput@c4"] == pytest.approx(109.336, abs=1e-3)
    assert "output_throughput@c1" in m and "p99_tpot_ms@c1" in m
    checked = sorted(g.metric for g in ctx.recorder.gates)
    assert checked == [
        "throughput.output_throughput@c1", "throughput.output_throughput@c4",
        "throughput.p99_ttft_ms@c1", "throughput.p99_ttft_ms@c4",
        "throughput.request_goodput@c4",
    ]
    assert all(g.passed for g in ctx.recorder.gates)
    assert ctx.recorder.artifacts["bench@c4"] == str(tmp_path / "bench_c4.json")


def test_a_latency_over_its_gate_fails_with_the_concurrency_in_the_metric(tmp_path):
    backend = StandInBackend(bench={4: DATA / "bench_serve_c4_goodput.json"})
    gates = {"throughput.p99_ttft_ms": {"max": 100}}
    ctx = _ctx(tmp_path, Stage.THROUGHPUT, gates, backend, fp8=False)
    ctx = dataclasses.replace(ctx, cell=dataclasses.replace(
        ctx.cell, settings=ctx.cell.settings.model_copy(update={
            "throughput": ctx.cell.settings.throughput.model_copy(update={"concurrencies": [4]})
        })))
    with pytest.raises(GateFailed, match=r"throughput.p99_ttft_ms@c4 = 401.878 \(gate <= 100\)"):
        throughput.run(ctx, server=LiveServer())


def test_throughput_repeats_record_the_median_with_its_spread_per_concurrency(tmp_path):
    backend = StandInBackend(bench={1: DATA / "bench_serve_c1.json"})
    ctx = _ctx(tmp_path, Stage.THROUGHPUT, {"throughput.output_throughput": {"min": 5}},
               backend, fp8=False)
    settings = ctx.cell.settings.model_copy(update={
        "throughput": ctx.cell.settings.throughput.model_copy(
            update={"concurrencies": [1], "repeats": 3})})
    ctx.cell = dataclasses.replace(ctx.cell, settings=settings)
    throughput.run(ctx, server=LiveServer())
    m = ctx.recorder.metrics
    assert m["repeats@c1"] == 3
    # the same recorded output three times: median == min == max, a zero-width interval
    assert m["output_throughput@c1"] == m["output_throughput_min@c1"] == m["output_throughput_max@c1"]
    assert (tmp_path / "repeat2" / "bench_c1.json").is_file()
    assert "bench@c1#2" in ctx.recorder.artifacts
    assert [g.metric for g in ctx.recorder.gates] == ["throughput.output_throughput@c1"]


def test_an_even_number_of_repeats_is_refused():
    from pydantic import ValidationError

    from harness.settings import ThroughputSettings

    with pytest.raises(ValidationError, match="must be odd"):
        ThroughputSettings(repeats=2)
