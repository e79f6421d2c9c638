"""Run options that select nothing or compare with nothing are usage errors, not silences."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from harness.cell import Stage
from harness.errors import HarnessError
from harness.matrix import load_matrix
from harness.options import RunOptions
from harness.options import check_selection
from harness.options import compare_fail_problem
from harness.options import parse_compare_check
from harness.results import RunStore
from harness.results import StageResult

ROOT = Path(__file__).resolve().parents[2]

MATRIX = """
name: t
models:
  dense: {path: /m/dense}
  moe: {path: /m/moe, moe: true, num_experts: 8}
axes: {device: [cpu], tp: [1, 2]}
stages: [preflight, serving, calibration]
"""


def fake_config(**options: Any) -> Any:
    values = {
        "harness_matrix": None, "harness_backend": None, "harness_cells": None,
        "harness_stages": None, "harness_plan": False, "harness_results_dir": None,
        "harness_baseline": None, "harness_compare_fail": [], "harness_cache": None,
        "keyword": "", "markexpr": "", **options,
    }
    return SimpleNamespace(
        rootpath="/r", getoption=lambda dest, default=None: values.get(dest, default),
        getini=lambda name: "",
    )


@pytest.fixture
def matrix(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(MATRIX)
    return load_matrix(path)


def baseline_run(results: Path) -> str:
    store = RunStore(results, "20261201-000000-000-abcd")
    store.open({})
    store.append(StageResult("m/cpu/tp1/bf16-kv-auto", "throughput", "passed",
                             metrics={"output_throughput@c1": 9.5, "smoke_reply": "hi"}))
    store.append(StageResult("m/cpu/tp1/bf16-kv-auto", "collectives", "passed",
                             metrics={"probe": 1}))
    return store.run_id


def test_compare_fail_on_a_stage_that_does_not_exist_is_a_usage_error():
    with pytest.raises(argparse.ArgumentTypeError, match=r"no stage 'acuracy'; stages: preflight"):
        parse_compare_check("acuracy.exact_match_strict:-0.02")
    assert parse_compare_check("throughput.p99_*@*:+10%").metric == "throughput.p99_*@*"


def test_compare_fail_on_a_metric_the_baseline_never_recorded_is_a_usage_error(tmp_path):
    run_id = baseline_run(tmp_path / "reports")
    check = parse_compare_check("throughput.output_tput:-5%")
    with pytest.raises(pytest.UsageError, match=(
        rf"--compare-fail throughput.output_tput: the baseline run {run_id} recorded no metric "
        r"matching it, so the check would never fire; it recorded: "
        r"throughput.output_throughput@c1$"
    )):
        RunOptions.from_config(fake_config(
            harness_compare_fail=[check], harness_baseline="latest",
            harness_results_dir=str(tmp_path / "reports")))


def test_compare_fail_on_recorded_metrics_and_globs_over_them_passes(tmp_path):
    baseline_run(tmp_path / "reports")
    checks = [parse_compare_check(v) for v in (
        "throughput.output_throughput:-5%", "throughput.*@c1:-5%", "collectives.probe:-10%")]
    options = RunOptions.from_config(fake_config(
        harness_compare_fail=checks, harness_baseline="latest",
        harness_results_dir=str(tmp_path / "reports")))
    assert options.compare_fail == tuple(checks)
    assert compare_fail_problem(checks, tmp_path / "nowhere", "latest") is None  # session says


def test_compare_fail_without_baseline_is_a_usage_error():
    check = parse_compare_check("throughput.output_throughput:-5%")
    with pytest.raises(pytest.UsageError, match=(
        r"--compare-fail \(throughput.output_throughput\) needs --baseline RUN"
    )):
        RunOptions.from_config(fake_config(harness_compare_fail=[check]))


def test_a_cells_glob_matching_nothing_names_the_glob_and_lists_cells(matrix):
    with pytest.raises(HarnessError, match=(
        r"--cells 'dense/\*/tp4/\*' matches no cell of .*m.yaml .*; cells: "
        r"dense/cpu/tp1/bf16-kv-auto, dense/cpu/tp2/bf16-kv-auto, moe/cpu/tp1/bf16-kv-auto"
    )):
        check_selection(matrix, ("dense/*", "dense/*/tp4/*"), None)


def test_stages_that_no_selected_cell_runs_is_an_error(matrix):
    with pytest.raises(HarnessError, match=(
        r"--stages calibration: no selected cell of .* runs these stages "
        r"\(they run: preflight, serving; a BF16 cell has no calibration\)"
    )):
        check_selection(matrix, ("dense/*",), (Stage.CALIBRATION,))


def test_a_selection_that_selects_something_passes(matrix):
    assert check_selection(matrix, ("moe/*",), (Stage.SERVING,)) is None
    assert check_selection(matrix, None, None) is None


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def test_validate_with_a_glob_matching_nothing_exits_2_with_one_line(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(MATRIX)
    done = _run("harness.cli", "validate", "--matrix", str(path), "--cells", "llama/*")
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"harness validate: --cells 'llama/*' matches no cell of {path}")


def test_pytest_refuses_compare_fail_without_baseline():
    no_baseline = _run("pytest", "suites", "--plan", "-q", "-p", "no:cacheprovider",
                       "--compare-fail", "throughput.output_throughput:-5%")
    assert no_baseline.returncode == 4
    assert "needs --baseline RUN" in no_baseline.stdout + no_baseline.stderr


def test_harness_compare_refuses_a_check_on_a_metric_neither_run_recorded(tmp_path):
    run_id = baseline_run(tmp_path / "reports")
    done = _run("harness.cli", "compare", run_id, run_id, "--results-dir",
                str(tmp_path / "reports"), "--compare-fail", "accuracy.exact_match_strict:-0.02")
    assert done.returncode == 2
    assert "recorded no metric matching it" in done.stderr
