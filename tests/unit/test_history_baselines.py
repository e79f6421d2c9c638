"""What the gates ask of the history: the BF16 reference chain and noise-band regressions."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_history import BF16  # beside this file: pytest's rootdir-relative import
from test_history import FP8
from test_history import VERSIONS
from test_history import write_run

from harness.history import History
from harness.history import HistoryError
from harness.history import RunContext
from harness.history import import_runs
from harness.history.baselines import fp8_accuracy_verdict
from harness.history.baselines import history_regressions
from harness.history.options import describe
from harness.history.options import resolve_history_url
from harness.results import StageResult
from harness.results import stage_results

LMEVAL = Path(__file__).resolve().parent.parent / "data" / "lmeval"


def _with_samples(run: Path, cell: str, which: str) -> None:
    """Put a recorded lm-eval samples file where the cell's accuracy stage keeps its output."""
    out = run / "cells" / cell.replace("/", "__") / "accuracy" / "out" / "tiny"
    out.mkdir(parents=True)
    shutil.copy(LMEVAL / f"samples_gsm8k_synthetic_{which}.jsonl",
                out / "samples_gsm8k_synthetic_2026-12-01T01-00-00.jsonl")


def _results(run: Path) -> dict[str, StageResult]:
    return {r.cell: r for r in stage_results(run / "results.jsonl") if r.stage == "accuracy"}


@pytest.fixture
def history(tmp_path: Path):
    h = History.open(str(tmp_path / "reports" / "history.sqlite"))
    yield h
    h.close()


def _like(history: History, run_id: str) -> RunContext:
    found = history.run_context(run_id)
    assert found is not None
    return found


def test_the_twin_of_the_same_run_is_judged_per_problem(tmp_path: Path, history: History):
    run = write_run(tmp_path / "reports", "20261201-010000-000-aaaa", accuracy=0.8)
    _with_samples(run, BF16, "bf16")
    _with_samples(run, FP8, "fp8")
    import_runs(history, [run])
    acc = _results(run)
    verdict = fp8_accuracy_verdict(
        acc[FP8], acc[BF16], run, history, _like(history, run.name), 0.02
    )
    assert verdict.details["test"] == "paired" and verdict.details["bf16_only"] == 4
    assert verdict.reference == f"BF16 cell {BF16} of this run"


def test_without_a_twin_the_last_passing_bf16_run_in_history_is_used(
    tmp_path: Path, history: History
):
    earlier = write_run(tmp_path / "reports", "20261201-010000-000-aaaa", accuracy=0.8)
    _with_samples(earlier, BF16, "bf16")
    now = write_run(tmp_path / "reports", "20261202-010000-000-aaaa", accuracy=0.725)
    _with_samples(now, FP8, "fp8")
    import_runs(history, [earlier, now])
    like = _like(history, now.name)
    verdict = fp8_accuracy_verdict(_results(now)[FP8], None, now, history, like, 0.02)
    assert verdict.details["test"] == "paired"
    assert verdict.reference.startswith("BF16 run 20261201-010000-000-aaaa (commit abc1234)")
    shutil.rmtree(earlier)  # the earlier run's files are gone: its figures still serve
    verdict = fp8_accuracy_verdict(_results(now)[FP8], None, now, history, like, 0.02)
    assert verdict.details["test"] == "unpaired"


def test_with_no_twin_and_no_history_the_matrix_expected_value_is_used(tmp_path: Path):
    run = write_run(tmp_path / "reports", "20261201-010000-000-aaaa", accuracy=0.6)
    fp8 = _results(run)[FP8]
    like = RunContext(run.name)
    verdict = fp8_accuracy_verdict(fp8, None, run, None, like, 0.02, expected=0.85)
    assert verdict.details["test"] == "expected" and verdict.status == "failed"
    unknown = fp8_accuracy_verdict(fp8, None, run, None, like, 0.02)
    assert unknown.status == "unknown" and not unknown.passed
    assert BF16 in unknown.message


def test_an_unknown_verdict_says_what_differs_in_the_runs_it_could_not_use(
    tmp_path: Path, history: History
):
    reports = tmp_path / "reports"
    import_runs(history, [
        write_run(reports, "20261201-010000-000-aaaa"),
        write_run(reports, "20261202-010000-000-aaaa", versions={"vllm": "0.33.0"}),
    ])
    like = _like(history, "20261202-010000-000-aaaa")
    fp8 = StageResult(FP8, "accuracy", "passed", metrics={"exact_match_strict": 0.8, "samples": 40})
    verdict = fp8_accuracy_verdict(fp8, None, tmp_path, history, like, 0.02)
    assert verdict.status == "unknown"
    assert "(20261201-010000-000-aaaa) is not comparable: lm_eval 0.4.13 -> absent" in verdict.message
    assert "vllm 0.32.0 -> 0.33.0" in verdict.message
    tp = StageResult(FP8, "throughput", "passed", metrics={"output_throughput@c1": 99.0})
    (regression,) = history_regressions(history, tp, like, {"throughput.output_throughput@*": 5})
    assert regression.status == "unknown" and "vllm 0.32.0 -> 0.33.0" in regression.message


def test_a_failed_twin_is_no_reference(tmp_path: Path):
    run = write_run(tmp_path / "reports", "20261201-010000-000-aaaa", status="failed")
    acc = _results(run)
    verdict = fp8_accuracy_verdict(acc[FP8], acc[BF16], run, None, RunContext(run.name), 0.02)
    assert verdict.status == "unknown"


def test_regressions_are_judged_against_comparable_passing_runs(
    tmp_path: Path, history: History
):
    reports = tmp_path / "reports"
    runs = [write_run(reports, f"202612{d:02d}-010000-000-aaaa", throughput=100.0 + d % 2)
            for d in range(1, 8)]
    import_runs(history, runs)
    like = _like(history, runs[-1].name)
    floors = {"throughput.output_throughput@*": -5.0}
    ok = StageResult(FP8, "throughput", "passed", metrics={"output_throughput@c1": 99.0})
    bad = StageResult(FP8, "throughput", "passed", metrics={"output_throughput@c1": 90.0})
    (v_ok,) = history_regressions(history, ok, like, floors)
    (v_bad,) = history_regressions(history, bad, like, floors)
    assert v_ok.status == "passed" and v_bad.status == "failed"
    assert "last 6 passing runs" in v_bad.message  # the run itself is not its own baseline
    assert history_regressions(history, ok, like, {"accuracy.*": 1.0}) == []
    (v_none,) = history_regressions(None, ok, like, floors)
    assert v_none.status == "unknown"


@pytest.mark.parametrize(
    ("cli", "ini", "expected"),
    [
        (None, None, "sqlite:///reports/history.sqlite"),
        (None, "postgresql://ci@db/h", "postgresql://ci@db/h"),
        ("x.sqlite", "postgresql://ci@db/h", "x.sqlite"),
        ("none", "postgresql://ci@db/h", None),
    ],
    ids=["default", "ini", "cli-wins", "off"],
)
def test_history_url_precedence_is_cli_then_ini_then_default(cli, ini, expected):
    assert resolve_history_url(cli, ini, Path("reports")) == expected


def test_a_bad_history_url_is_refused_before_the_run():
    with pytest.raises(HistoryError, match="unsupported database 'redis'"):
        resolve_history_url("redis://x", None, Path("reports"))
    assert describe(None) == "history: off"
    assert describe("postgresql://ci:pw@db/h") == "history: postgresql://ci:***@db/h"


def test_history_references_fall_back_from_the_run_to_the_history(
    tmp_path: Path, history: History
):
    from harness.cell import Cell
    from harness.cell import ModelFacts
    from harness.history.references import HistoryReferences
    from harness.references import NoReferences

    import_runs(history, [write_run(tmp_path / "reports", "20261201-010000-000-aaaa")])
    cell = Cell(ModelFacts("tiny"), "cpu", quantization="fp8", kv_cache_dtype="fp8")
    assert cell.id == FP8
    like = RunContext.from_record({
        "run_id": "20261202-010000-000-aaaa", "backend": "cpu", "versions": VERSIONS,
        "host_fingerprint": {"host_class": "cpu/cpu/x86_64/test/2c", "device": "cpu"},
    })
    found = HistoryReferences(NoReferences(), history, like).bf16_for(cell, "accuracy")
    assert found.metrics is not None and found.metrics["exact_match_strict"] == 0.85
    assert found.source == "BF16 run 20261201-010000-000-aaaa (commit abc1234) from history"
    other = RunContext.from_record({**{"run_id": "r9", "backend": "cpu"},
                                    "versions": {"vllm": "0.40.0"}})
    missing = HistoryReferences(NoReferences(), history, other).bf16_for(cell, "accuracy")
    assert missing.metrics is None
    assert missing.missing.startswith("no run to look the BF16 twin up in; and no passing")
    assert "vllm 0.32.0 -> 0.40.0" in missing.missing
