"""Gate specs, merging and evaluation."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from harness.gates import GateSpec
from harness.gates import evaluate
from harness.gates import merge_gates


def test_expected_minus_tolerance_is_a_one_sided_floor():
    spec = GateSpec(expected=0.8, tolerance=0.05)
    assert spec.lower == pytest.approx(0.75)
    (low,) = evaluate("c", "accuracy", {"em": 0.76}, {"accuracy.em": spec})
    assert low.passed
    (high,) = evaluate("c", "accuracy", {"em": 0.99}, {"accuracy.em": spec})
    assert high.passed  # one-sided: better than expected never fails
    (bad,) = evaluate("c", "accuracy", {"em": 0.74}, {"accuracy.em": spec})
    assert not bad.passed
    assert bad.message == "c: accuracy.em = 0.74 (gate >= 0.75) FAILED"


def test_min_and_expected_together_take_the_stricter_floor():
    assert GateSpec(min=0.7, expected=0.8, tolerance=0.2).lower == 0.7


def test_max_gate_and_suffixed_metrics_fall_back_to_the_base_gate():
    gates = {"throughput.p99_ttft_ms": GateSpec(max=100)}
    outcomes = evaluate("c", "throughput", {"p99_ttft_ms@c1": 50, "p99_ttft_ms@c32": 150}, gates)
    assert [o.passed for o in outcomes] == [True, False]
    assert outcomes[1].metric == "throughput.p99_ttft_ms@c32"


def test_an_exact_suffixed_gate_wins_over_the_base_gate():
    gates = {"throughput.tok_s": GateSpec(min=10), "throughput.tok_s@c32": GateSpec(min=100)}
    outcomes = evaluate("c", "throughput", {"tok_s@c1": 20, "tok_s@c32": 50}, gates)
    assert [o.passed for o in outcomes] == [True, False]


def test_a_gated_metric_that_was_not_measured_fails():
    (outcome,) = evaluate("c", "collectives", {}, {"collectives.busbw_gbps": GateSpec(min=1)})
    assert not outcome.passed
    assert math.isnan(outcome.value)
    assert "was not measured" in outcome.message


def test_gates_of_other_stages_are_ignored():
    assert evaluate("c", "accuracy", {"em": 0.1}, {"throughput.em": GateSpec(min=1)}) == []


def test_drop_versus_bf16_compares_with_the_bf16_cell():
    gates = {"accuracy.em": GateSpec(max_drop_vs_bf16=0.02)}
    (ok,) = evaluate("c", "accuracy", {"em": 0.79}, gates, bf16_metrics={"em": 0.80})
    (bad,) = evaluate("c", "accuracy", {"em": 0.70}, gates, bf16_metrics={"em": 0.80})
    assert ok.passed and not bad.passed
    assert "bf16 0.8" in bad.bound
    # without a reference the gate is UNKNOWN, never a pass (it used to pass unevaluated)
    (missing,) = evaluate("c", "accuracy", {"em": 0.70}, gates, bf16_metrics=None,
                          bf16_missing="no BF16 twin c-bf16 in the matrix")
    assert not missing.passed and missing.unknown and not missing.failed
    assert "no BF16 twin c-bf16 in the matrix" in missing.message
    assert missing.as_dict()["status"] == "unknown"
    # a BF16 cell is the reference: the drop gate does not apply to it
    assert evaluate("c", "accuracy", {"em": 0.70}, gates, None, is_bf16=True) == []


def test_override_merges_fields_into_the_base_gate():
    merged = merge_gates({"a.x": GateSpec(min=1, max=10)}, {"a.x": GateSpec(max=5)})
    assert merged["a.x"].min == 1 and merged["a.x"].max == 5


@pytest.mark.parametrize("fields", [{}, {"tolerance": 0.1}], ids=["empty", "tolerance-alone"])
def test_a_gate_without_a_bound_is_rejected(fields):
    with pytest.raises(ValidationError):
        GateSpec(**fields)


def test_a_lower_bound_gate_judges_the_recorded_interval_and_is_unknown_without_one():
    gates = {"accuracy.em": GateSpec(min_lower_bound=0.7)}
    (ok,) = evaluate("c", "accuracy", {"em": 0.8, "em_ci95_low": 0.71}, gates)
    (bad,) = evaluate("c", "accuracy", {"em": 0.8, "em_ci95_low": 0.69}, gates)
    (none,) = evaluate("c", "accuracy", {"em": 0.8}, gates)
    assert ok.passed and bad.failed and none.unknown and not none.passed
    assert "95% CI low 0.69" in bad.message and "em_ci95_low" in none.missing
    per_c = evaluate("c", "throughput", {"tps@c4": 9.0, "tps_ci95_low@c4": 8.0},
                     {"throughput.tps": GateSpec(min_lower_bound=8.5)})
    assert [o.failed for o in per_c] == [True]
