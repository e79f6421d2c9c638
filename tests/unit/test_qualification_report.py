"""The sign-off report: verdict, gates, FP8 against BF16, emulations, history and trend plot."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.report import qualification as q
from harness.results import ResultStore
from harness.results import RunStore
from harness.results import StageResult

BF16 = "m/cpu/tp1/bf16-kv-auto"
FP8 = "m/cpu/tp1/fp8-kv-fp8"


def _stage(cell: str, stage: str, status: str = "passed", **metrics: object) -> StageResult:
    return StageResult(cell=cell, stage=stage, status=status, metrics=dict(metrics),
                       started="2026-11-23T10:00:30+00:00", duration_s=60.0)


def _context(matrix: str = "smoke", backend: str = "cpu") -> dict[str, object]:
    return {"matrix_name": matrix, "backend": backend, "started": "2026-11-23T10:00:00+00:00",
            "versions": {"vllm": "0.20.1", "lm-eval": None}}


def _run(results: list[StageResult], backend: str = "cpu", run_id: str = "r2") -> q.Run:
    return q.Run(run_id, _context(backend=backend), results)


def _passing(acc_fp8: float = 0.75, tps_fp8: float = 90.0) -> list[StageResult]:
    return [
        _stage(BF16, "accuracy", exact_match_strict=0.77),
        _stage(BF16, "throughput", **{"output_throughput@c1": 120.0}),
        _stage(FP8, "serving", emulated="kv_cache", kv_cache="fp8 emulated", weights="fp8"),
        _stage(FP8, "accuracy", exact_match_strict=acc_fp8),
        _stage(FP8, "throughput", **{"output_throughput@c1": tps_fp8}),
    ]


def test_verdict_needs_every_stage_to_run_and_pass():
    assert q.verdict(_run(_passing()))[0] == "QUALIFIED"
    failed = [*_passing(), _stage(FP8, "calibration", "failed")]
    word, why = q.verdict(_run(failed))
    assert word == "NOT QUALIFIED" and "1 stage(s) failed in 1 cell(s)" in why
    assert q.verdict(_run([*_passing(), _stage(FP8, "collectives", "skipped")]))[0] == "INCOMPLETE"
    assert q.verdict(_run([]))[0] == "INCOMPLETE"


def test_a_run_of_part_of_the_matrix_is_incomplete_and_says_which_part():
    ctx = {**_context(), "matrix_stages": 12, "selection": ["--cells m/*/fp8-*"]}
    word, why = q.verdict(q.Run("r2", ctx, _passing()))
    assert word == "INCOMPLETE"
    assert "5 of the matrix's 12 stages ran (--cells m/*/fp8-*)" in why
    assert "| selection | --cells m/*/fp8-* |" in q.render(q.Run("r2", ctx, _passing()), [])
    whole = {**_context(), "matrix_stages": 5, "selection": []}
    assert q.verdict(q.Run("r2", whole, _passing()))[0] == "QUALIFIED"
    assert "| selection | the whole matrix |" in q.render(q.Run("r2", whole, _passing()), [])
    stopped = {**_context(), "matrix_stages": 9}
    assert "the run ended early" in q.verdict(q.Run("r2", stopped, _passing()))[1]


def test_report_lists_every_gate_with_its_bound_and_marks_failures():
    results = _passing()
    results[3].gates = [
        {"metric": "accuracy.exact_match_strict", "value": 0.5, "passed": False, "bound": ">= 0.7"},
        {"metric": "accuracy.exact_match_strict", "value": 0.5, "passed": True, "bound": "vs bf16"},
    ]
    results[0].gates = [
        {"metric": "accuracy.exact_match_strict", "value": 0.77, "passed": True, "bound": "vs bf16"}
    ]
    text = q.render(_run(results))
    assert f"| {FP8} | accuracy.exact_match_strict | 0.5 | >= 0.7 | **FAIL** |" in text
    assert f"| {FP8} | accuracy.exact_match_strict | 0.5 | vs bf16 | n/a (no BF16 cell ran) |" in text
    assert f"| {BF16} | accuracy.exact_match_strict | 0.77 | vs bf16 | n/a (the baseline) |" in text


def test_fp8_is_set_beside_its_bf16_twin():
    text = q.render(_run(_passing(acc_fp8=0.74, tps_fp8=90.0)))
    assert f"| {FP8} | 0.77 | 0.74 | -3.0 points | 120 | 90 | 0.75x |" in text


def test_cpu_runs_say_they_rehearse_and_what_they_emulated():
    cpu = q.render(_run(_passing()))
    assert "does not qualify Gaudi hardware" in cpu
    assert f"- **{FP8}**: kv_cache; KV cache: fp8 emulated; weights: fp8" in cpu
    assert "| lm-eval | not installed |" in cpu and "| vllm | 0.20.1 |" in cpu
    assert "does not qualify Gaudi hardware" not in q.render(_run(_passing(), backend="gaudi"))


def test_wall_time_runs_from_the_start_to_the_end_of_the_last_stage():
    # context starts 10:00:00, every stage starts 10:00:30 and takes 60 s
    assert "| wall time | 1.5 min |" in q.render(_run(_passing()))


def _store(tmp_path: Path, runs: list[tuple[str, str, str, float]]) -> ResultStore:
    for run_id, matrix, backend, tps in runs:
        store = RunStore(tmp_path, run_id)
        store.open(_context(matrix, backend))
        for result in _passing(tps_fp8=tps):
            store.append(result)
    return ResultStore(tmp_path)


def test_history_is_earlier_runs_of_the_same_matrix_and_backend_oldest_first(tmp_path):
    store = _store(tmp_path, [
        ("20261120-a", "smoke", "cpu", 80.0),
        ("20261121-a", "other", "cpu", 81.0),
        ("20261121-b", "smoke", "gaudi", 82.0),
        ("20261122-a", "smoke", "cpu", 83.0),
        ("20261123-a", "smoke", "cpu", 84.0),
        ("20261124-a", "smoke", "cpu", 85.0),  # later than the run: not its history
    ])
    run = q.load_run(store, "20261123-a")
    assert [r.run_id for r in q.earlier_runs(store, run)] == ["20261120-a", "20261122-a"]
    assert [r.run_id for r in q.earlier_runs(store, run, limit=1)] == ["20261122-a"]


def test_report_with_history_has_a_trend_table_and_a_real_plot(tmp_path):
    store = _store(tmp_path, [("20261122-a", "smoke", "cpu", 80.0),
                              ("20261123-a", "smoke", "cpu", 90.0)])
    run = q.load_run(store, "20261123-a")
    path = q.write_report(run, q.earlier_runs(store, run), tmp_path / "20261123-a")
    text = path.read_text()
    assert "![trend](trend.png)" in text
    assert f"| {FP8} | 80 | 90 |" in text
    png = tmp_path / "20261123-a" / "trend.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "20261123-a").glob("*.tmp*"))


def test_a_first_run_has_no_trend_section(tmp_path):
    store = _store(tmp_path, [("20261123-a", "smoke", "cpu", 90.0)])
    run = q.load_run(store, "20261123-a")
    text = q.write_report(run, [], tmp_path / "20261123-a").read_text()
    assert "## Trend" not in text
    assert not (tmp_path / "20261123-a" / "trend.png").exists()


@pytest.mark.parametrize("value,shown", [(float("nan"), "not measured"), (0.123456, "0.1235")])
def test_values_are_shown_readably(value, shown):
    results = [_stage(BF16, "accuracy")]
    results[0].gates = [{"metric": "accuracy.x", "value": value, "passed": False, "bound": "present"}]
    assert f"| accuracy.x | {shown} |" in q.render(_run(results))


def test_the_report_names_the_serving_stack_of_each_cell_that_has_one():
    results = _passing()
    serving = next(r for r in results if r.stage == "serving")
    serving.metrics["stack"] = "vllm-fork"
    text = q.render(_run(results))
    assert f"- {serving.cell}: vllm-fork" in text
    assert "Serving stack per cell" not in q.render(_run(_passing()))


def test_a_gate_row_says_what_it_was_judged_against_and_an_unknown_one_what_is_missing():
    results = _passing()
    results[3].gates = [
        {"metric": "accuracy.exact_match_strict", "value": 0.79, "passed": True,
         "status": "passed", "bound": "drop <= 0.1 or not significant (alpha 0.05)",
         "reference": "BF16 cell m/cpu/tp1/bf16-kv-auto of this run", "p_value": 0.5},
        {"metric": "accuracy.exact_match_flexible", "value": 0.79, "passed": False,
         "status": "unknown", "bound": "vs bf16", "missing": "no BF16 twin in the matrix"},
    ]
    run = _run(results)
    text = q.render(run)
    assert "(vs BF16 cell m/cpu/tp1/bf16-kv-auto of this run) | pass |" in text
    assert "| **UNKNOWN**: no BF16 twin in the matrix |" in text
    assert q.verdict(run)[0] == "INCOMPLETE" and "could not be evaluated" in q.verdict(run)[1]
