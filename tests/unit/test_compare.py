"""Regression checks against a baseline run."""

from __future__ import annotations

import argparse

import pytest

from harness.compare import compare
from harness.compare import parse_compare_fail
from harness.results import StageResult


def result(cell: str, stage: str, status: str = "passed", **metrics: float) -> StageResult:
    return StageResult(cell=cell, stage=stage, status=status, metrics=dict(metrics))


@pytest.mark.parametrize(
    ("spec", "base", "value", "fails"),
    [
        ("throughput.tok_s:-5%", 100, 96, False),
        ("throughput.tok_s:-5%", 100, 94, True),
        ("throughput.p99_ttft_ms:+10%", 100, 111, True),
        ("throughput.p99_ttft_ms:+10%", 100, 50, False),
        ("accuracy.em:-0.02", 0.80, 0.79, False),
        ("accuracy.em:-0.02", 0.80, 0.77, True),
    ],
)
def test_signed_limits_say_which_way_is_worse(spec, base, value, fails):
    check = parse_compare_fail(spec)
    assert (check.fails(base, value) is not None) == fails


@pytest.mark.parametrize(
    "spec",
    ["tok_s:-5%", "throughput.tok_s", "throughput.tok_s:5%", "throughput.tok_s:-x%", "a.b:0"],
)
def test_bad_compare_fail_specs_quote_the_value(spec):
    with pytest.raises(argparse.ArgumentTypeError, match=r"--compare-fail"):
        parse_compare_fail(spec)


def test_only_metrics_of_the_same_cell_in_both_runs_are_compared():
    base = [
        result("m/g2/tp1/fp8-kv-auto", "throughput", tok_s=100.0),
        result("m/g3/tp1/fp8-kv-auto", "throughput", tok_s=200.0),
    ]
    new = [
        result("m/g2/tp1/fp8-kv-auto", "throughput", tok_s=90.0),
        result("m/g2/tp1/bf16-kv-auto", "throughput", tok_s=1.0),
    ]
    (delta,) = compare(base, new, [parse_compare_fail("throughput.tok_s:-5%")])
    assert delta.cell == "m/g2/tp1/fp8-kv-auto"
    assert delta.change_pct == pytest.approx(-10.0)
    assert delta.failure == "-10% (allowed -5%)"


def test_suffixed_metrics_match_their_base_name_and_failed_stages_are_not_compared():
    base = [result("c", "throughput", **{"tok_s@c32": 100.0}), result("c", "accuracy", em=0.9)]
    new = [
        result("c", "throughput", **{"tok_s@c32": 50.0}),
        result("c", "accuracy", "failed", em=0.1),
    ]
    (delta,) = compare(base, new, [parse_compare_fail("throughput.tok_s:-5%")])
    assert delta.metric == "throughput.tok_s@c32" and delta.failure
