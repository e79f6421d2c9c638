"""Gate verdicts: interval bounds, the FP8-vs-BF16 rule, and the reference chain to `unknown`."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from harness import stats

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "lmeval"
FP8 = stats.load_samples(SAMPLES / "samples_gsm8k_synthetic_fp8.jsonl")
BF16 = stats.load_samples(SAMPLES / "samples_gsm8k_synthetic_bf16.jsonl")
CELL = "tiny/cpu/tp1/fp8-kv-fp8"


def _samples(correct: dict[int, bool], name: str) -> stats.Samples:
    return stats.Samples(correct, name, {})


def test_min_lower_bound_fails_a_point_estimate_that_passes_min():
    acc = stats.Proportion(212, 250)  # 0.848, Wilson low 0.798
    assert stats.interval_verdict(acc, min_value=0.8).passed
    verdict = stats.interval_verdict(acc, min_value=0.8, min_lower_bound=0.8, cell=CELL)
    assert verdict.status == "failed"
    assert "CI low >= 0.8" in verdict.bound and "n=250" in verdict.message
    assert verdict.details["ci95_low"] == pytest.approx(0.7983, abs=1e-4)


def test_interval_verdict_needs_a_bound():
    with pytest.raises(ValueError, match="min_value or min_lower_bound"):
        stats.interval_verdict(stats.Proportion(1, 2))


def test_paired_verdict_on_recorded_samples_is_within_noise_at_n40():
    verdict = stats.paired_accuracy_verdict(FP8, BF16, max_drop=0.02, cell=CELL)
    assert verdict.status == "passed"  # 7.5-point drop, but 4 vs 1 discordant: p = 0.375
    assert verdict.details["bf16_only"] == 4 and verdict.details["fp8_only"] == 1
    assert verdict.details["p_value"] == pytest.approx(0.375)
    assert "within noise" in verdict.message


def test_require_non_inferiority_fails_what_the_small_sample_cannot_show():
    verdict = stats.paired_accuracy_verdict(
        FP8, BF16, max_drop=0.02, cell=CELL, require_non_inferiority=True
    )
    assert verdict.status == "failed"
    assert "require_non_inferiority" in verdict.message


def test_paired_verdict_fails_a_significant_drop_beyond_the_allowance():
    n = 400
    bf16 = {i: i % 4 != 0 for i in range(n)}  # 75%
    fp8 = dict(bf16)
    for i in [i for i in range(n) if bf16[i]][:30]:  # FP8 loses 30, gains 2
        fp8[i] = False
    for i in [i for i in range(n) if not bf16[i]][:2]:
        fp8[i] = True
    verdict = stats.paired_accuracy_verdict(
        _samples(fp8, "fp8"), _samples(bf16, "bf16"), max_drop=0.02, cell=CELL
    )
    assert verdict.status == "failed"
    assert verdict.details["drop"] == pytest.approx(0.07)
    assert verdict.details["p_value"] < 1e-5


def test_paired_verdict_passes_when_the_interval_is_inside_the_allowance():
    n = 1000
    bf16 = {i: i % 4 != 0 for i in range(n)}
    verdict = stats.paired_accuracy_verdict(
        _samples(dict(bf16), "fp8"), _samples(bf16, "bf16"), max_drop=0.02
    )
    assert verdict.status == "passed" and "whole interval" in verdict.message


def test_verdict_as_dict_has_the_gate_keys_and_status():
    entry = stats.paired_accuracy_verdict(FP8, BF16, max_drop=0.02).as_dict()
    assert {"metric", "value", "passed", "status", "bound", "message", "reference"} <= set(entry)
    assert entry["passed"] is True and entry["status"] == "passed"


ACC = stats.Proportion(FP8.k, FP8.n)


def test_reference_chain_prefers_the_twin_of_the_same_run():
    refs = [
        stats.Bf16Reference("BF16 cell of this run", samples=BF16, accuracy=stats.Proportion(32, 40)),
        stats.Bf16Reference("history run R", accuracy=stats.Proportion(10, 40)),
    ]
    verdict = stats.drop_vs_bf16_verdict(ACC, FP8, refs, 0.02, cell=CELL)
    assert verdict.reference == "BF16 cell of this run" and verdict.details["test"] == "paired"


def test_reference_chain_falls_back_to_history_then_matrix_expected():
    history = stats.Bf16Reference("history run R (commit abc)", accuracy=stats.Proportion(33, 40))
    verdict = stats.drop_vs_bf16_verdict(ACC, FP8, [None, history], 0.02)
    assert verdict.details["test"] == "unpaired" and "history run R" in verdict.reference
    expected = stats.Bf16Reference("matrix expected", expected=0.80)
    verdict = stats.drop_vs_bf16_verdict(ACC, None, [None, None, expected], 0.02)
    assert verdict.details["test"] == "expected" and verdict.status == "passed"


def test_unpaired_fallback_names_why_the_samples_could_not_be_paired():
    short = _samples({0: True, 1: False}, "short.jsonl")
    ref = stats.Bf16Reference("history run R", samples=short, accuracy=stats.Proportion(32, 40))
    verdict = stats.drop_vs_bf16_verdict(ACC, FP8, [ref], 0.02)
    assert verdict.details["test"] == "unpaired"
    assert "not paired" in verdict.reference and "short.jsonl" in verdict.reference


def test_no_reference_is_unknown_never_a_pass():
    verdict = stats.drop_vs_bf16_verdict(
        ACC, FP8, [None, None, None], 0.02, cell=CELL, bf16_cell="tiny/cpu/tp1/bf16-kv-auto"
    )
    assert verdict.status == "unknown" and not verdict.passed
    assert math.isnan(verdict.value)
    assert "tiny/cpu/tp1/bf16-kv-auto" in verdict.message and "expected" in verdict.message


def test_expected_reference_fails_a_clearly_lower_fp8():
    verdict = stats.expected_accuracy_verdict(stats.Proportion(180, 250), 0.80, 0.02)
    assert verdict.status == "failed"  # 72% vs 80%, Wilson high 0.77


def test_a_verdict_becomes_the_gate_outcome_the_recorder_keeps():
    from harness.gates import GateStatus

    unknown = stats.drop_vs_bf16_verdict(ACC, FP8, [None], 0.02, cell=CELL)
    outcome = unknown.as_outcome()
    assert outcome.status is GateStatus.UNKNOWN and not outcome.passed
    assert outcome.missing == unknown.message and unknown.as_dict()["missing"] == unknown.message
    passed = stats.paired_accuracy_verdict(FP8, BF16, max_drop=0.02).as_outcome()
    assert passed.status is GateStatus.PASSED and passed.passed
