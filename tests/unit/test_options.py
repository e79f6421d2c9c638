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
from harness.options import parse_compare_check

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


def test_compare_fail_on_a_metric_no_stage_records_is_a_usage_error():
    with pytest.raises(argparse.ArgumentTypeError, match=(
        r"--compare-fail 'throughput.output_tput:-5%': throughput records no metric "
        r"'output_tput', so this check would never fire; known: request_throughput"
    )):
        parse_compare_check("throughput.output_tput:-5%")
    with pytest.raises(argparse.ArgumentTypeError, match=r"no stage 'acuracy'; stages: preflight"):
        parse_compare_check("acuracy.exact_match_strict:-0.02")


def test_compare_fail_accepts_recorded_metrics_and_globs_over_them():
    assert parse_compare_check("accuracy.exact_match_strict:-0.02").limit == -0.02
    assert parse_compare_check("throughput.p99_*@*:+10%").metric == "throughput.p99_*@*"
    assert parse_compare_check("throughput.output_throughput@c32:-5%").relative


def test_compare_fail_without_baseline_is_a_usage_error():
    check = parse_compare_check("throughput.output_throughput:-5%")
    with pytest.raises(pytest.UsageError, match=(
        r"--compare-fail \(throughput.output_throughput\) needs --baseline RUN"
    )):
        RunOptions.from_config(fake_config(harness_compare_fail=[check]))
    options = RunOptions.from_config(fake_config(harness_compare_fail=[check],
                                                 harness_baseline="latest"))
    assert options.compare_fail == (check,)


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


def test_pytest_refuses_compare_fail_without_baseline_and_on_unknown_metric():
    no_baseline = _run("pytest", "suites", "--plan", "-q", "-p", "no:cacheprovider",
                       "--compare-fail", "throughput.output_throughput:-5%")
    assert no_baseline.returncode == 4
    assert "needs --baseline RUN" in no_baseline.stdout + no_baseline.stderr
    unknown = _run("pytest", "suites", "--plan", "-q", "-p", "no:cacheprovider",
                   "--baseline", "latest", "--compare-fail", "throughput.tput:-5%")
    assert unknown.returncode == 4
    assert "throughput records no metric 'tput'" in unknown.stderr
