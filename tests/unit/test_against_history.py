"""A run's gated figures against their history (SQLite): a drop beyond the learned noise is
reported, and fails the run only where a --compare-fail names the metric."""

from __future__ import annotations

from harness.compare import parse_compare_fail
from harness.history.context import RunContext
from harness.history.store import History
from harness.report.against_history import against_history
from harness.results import StageResult

CELL = "m/cpu/tp1/bf16-kv-auto"
KEY = "throughput.output_throughput@c1"


def _context(run_id: str) -> dict[str, object]:
    return {"kind": "run", "run_id": run_id, "backend": "cpu", "matrix_name": "m",
            "started": f"2026-12-0{run_id[-1]}T00:00:00+00:00", "versions": {"vllm": "0.32.0"},
            "host_fingerprint": {"host_class": "cpu/cpu/x86_64/test/2c", "device": "cpu"}}


def _result(value: float) -> StageResult:
    return StageResult(cell=CELL, stage="throughput", status="passed",
                       metrics={"output_throughput@c1": value})


def _history(tmp_path, values):
    history = History.open(f"sqlite:///{tmp_path / 'h.sqlite'}")
    for i, value in enumerate(values):
        history.record_run(_context(f"run-{i}"))
        history.record_result(f"run-{i}", _result(value))
    return history


def test_a_drop_beyond_the_noise_is_reported_and_fails_only_with_a_compare_fail(tmp_path):
    history = _history(tmp_path, [100.0, 101.0, 99.5, 100.5, 99.0, 100.2])
    now = "run-9"
    history.record_run(_context(now))
    like = RunContext.from_record(_context(now))
    report = against_history(history, like, [_result(80.0)], ["throughput.output_throughput"], [])
    assert any(line.startswith("- **regression**") for line in report.lines)
    assert "1 beyond it" in report.lines[0] and report.failing == []
    strict = against_history(history, like, [_result(80.0)], ["throughput.output_throughput"],
                             [parse_compare_fail("throughput.output_throughput:-5%")])
    assert len(strict.failing) == 1
    steady = against_history(history, like, [_result(100.3)], ["throughput.output_throughput"], [])
    assert "0 beyond it" in steady.lines[0] and steady.failing == []


def test_without_enough_history_nothing_is_judged(tmp_path):
    history = _history(tmp_path, [100.0])
    history.record_run(_context("run-9"))
    like = RunContext.from_record(_context("run-9"))
    report = against_history(history, like, [_result(50.0)], ["throughput.output_throughput"], [])
    assert "none had enough history yet" in report.lines[0] and report.failing == []
