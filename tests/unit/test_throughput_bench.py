"""`vllm bench serve --save-result` JSON (recorded on vLLM CPU 0.32) -> throughput metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.serving.bench import BenchResultError
from harness.serving.bench import load_result
from harness.serving.bench import metric_keys
from harness.serving.bench import parse_result

DATA = Path(__file__).resolve().parents[1] / "data" / "vllm"


def test_every_figure_of_a_real_result_is_recorded_with_the_concurrency_suffix():
    data = load_result(DATA / "bench_serve_c4_goodput.json")
    metrics = parse_result(data, 4)
    for key in metric_keys():
        assert f"{key}@c4" in metrics
    assert metrics["output_throughput@c4"] == pytest.approx(109.336, abs=1e-3)
    assert metrics["p99_ttft_ms@c4"] == pytest.approx(401.878, abs=1e-3)
    assert metrics["median_itl_ms@c4"] == pytest.approx(33.409, abs=1e-3)
    assert metrics["request_goodput@c4"] == pytest.approx(3.4167, abs=1e-4)
    assert metrics["completed@c4"] == 8 and metrics["failed@c4"] == 0


def test_goodput_is_left_out_when_the_run_set_no_slo():
    data = load_result(DATA / "bench_serve_c1.json")
    assert data["request_goodput"] is None
    metrics = parse_result(data, 1)
    assert "request_goodput@c1" not in metrics
    assert metrics["output_throughput@c1"] > 0


def test_a_result_without_percentiles_names_the_missing_keys_and_the_flags():
    data = load_result(DATA / "bench_serve_c1.json")
    del data["p99_tpot_ms"]
    with pytest.raises(BenchResultError, match=r"missing p99_tpot_ms .*--metric-percentiles"):
        parse_result(data, 1, "bench_c1.json")


def test_a_result_from_another_concurrency_is_refused():
    data = load_result(DATA / "bench_serve_c4_goodput.json")
    with pytest.raises(BenchResultError, match="ran at max_concurrency 4, expected 32"):
        parse_result(data, 32)


def test_a_missing_result_file_says_the_benchmark_did_not_write_it(tmp_path):
    with pytest.raises(BenchResultError, match="did not write it"):
        load_result(tmp_path / "bench_c1.json")


def test_a_nan_figure_is_an_error_not_a_number(tmp_path):
    data = load_result(DATA / "bench_serve_c1.json")
    data["mean_ttft_ms"] = float("nan")
    path = tmp_path / "bench_c1.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(BenchResultError, match="mean_ttft_ms is NaN"):
        parse_result(load_result(path), 1)
