"""Paired FP8-vs-BF16 accuracy: lm-eval samples, exact McNemar, Newcombe intervals, verdicts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from harness import stats

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "lmeval"
FP8 = SAMPLES / "samples_gsm8k_synthetic_fp8.jsonl"
BF16 = SAMPLES / "samples_gsm8k_synthetic_bf16.jsonl"


def _draw(rng, n, p_bf16, discordant, drop):
    p_bf16_only, p_fp8_only = (discordant + drop) / 2, (discordant - drop) / 2
    p_both = p_bf16 - p_bf16_only
    probs = [p_both, p_fp8_only, p_bf16_only, 1 - p_both - p_bf16_only - p_fp8_only]
    return stats.PairedCounts(*(int(x) for x in rng.multinomial(n, probs)))


def test_load_samples_reads_one_filter_of_lm_eval_log_samples():
    strict = stats.load_samples(FP8)
    assert (strict.n, strict.k) == (40, 29)
    assert len(strict.hashes) == 40
    flexible = stats.load_samples(FP8, filter_name="flexible-extract")
    assert flexible.n == 40


def test_pair_counts_the_discordant_problems():
    counts = stats.pair(stats.load_samples(FP8), stats.load_samples(BF16))
    assert counts == stats.PairedCounts(both=28, fp8_only=1, bf16_only=4, neither=7)
    assert (counts.fp8_rate, counts.bf16_rate) == (29 / 40, 32 / 40)


def test_pair_refuses_files_that_asked_different_problems(tmp_path):
    lines = BF16.read_text().splitlines()
    short = tmp_path / "samples_short.jsonl"
    short.write_text("\n".join(lines[:-4]) + "\n")
    with pytest.raises(stats.SamplesError, match="did not ask the same problems"):
        stats.pair(stats.load_samples(FP8), stats.load_samples(short))


def test_pair_refuses_the_same_ids_over_different_datasets(tmp_path):
    rows = [json.loads(line) for line in BF16.read_text().splitlines()]
    for row in rows:
        row["doc_hash"] = "0" * 64
    other = tmp_path / "samples_other.jsonl"
    other.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(stats.SamplesError, match="datasets are not the same"):
        stats.pair(stats.load_samples(FP8), stats.load_samples(other))


def test_a_corrupt_samples_line_is_named_with_its_number(tmp_path):
    bad = tmp_path / "samples_bad.jsonl"
    bad.write_text(FP8.read_text().splitlines()[0] + "\n{not json\n")
    with pytest.raises(stats.SamplesError, match=r"samples_bad.jsonl:2: not an lm-eval sample"):
        stats.load_samples(bad)


def test_find_samples_file_says_to_log_samples_when_there_is_none(tmp_path):
    with pytest.raises(stats.SamplesError, match="--log_samples"):
        stats.find_samples_file(tmp_path, "gsm8k")


def test_mcnemar_exact_is_the_binomial_test_of_the_discordant_pairs():
    # 2 * P(X <= 2 | 12, 1/2) = 2 * (1 + 12 + 66) / 4096
    assert stats.mcnemar_exact(2, 10) == pytest.approx(2 * 79 / 4096)
    assert stats.mcnemar_exact(0, 0) == 1.0


def test_mcnemar_type_one_error_is_at_most_alpha_by_simulation():
    rng = np.random.default_rng(13)
    rejected = 0
    for _ in range(2000):
        c = _draw(rng, 250, 0.75, 0.08, 0.0)
        rejected += stats.mcnemar_exact(c.fp8_only, c.bf16_only) < 0.05
    assert 0.015 <= rejected / 2000 <= 0.06  # exact McNemar is conservative, never liberal


def test_mcnemar_detects_a_three_point_drop_at_full_gsm8k_by_simulation():
    rng = np.random.default_rng(14)
    hits = 0
    for _ in range(500):
        c = _draw(rng, 1319, 0.75, 0.08, 0.03)
        hits += stats.mcnemar_exact(c.fp8_only, c.bf16_only) < 0.05 and c.bf16_only > c.fp8_only
    assert hits / 500 > 0.9


@pytest.mark.parametrize("drop", [0.0, 0.03], ids=["no-drop", "3pt-drop"])
def test_paired_difference_interval_covers_the_true_drop_by_simulation(drop):
    rng = np.random.default_rng(15)
    covered = sum(
        stats.paired_difference(_draw(rng, 250, 0.75, 0.08, drop)).contains(-drop)
        for _ in range(2000)
    )
    assert 0.93 <= covered / 2000 <= 0.98


def test_unpaired_difference_interval_covers_the_true_drop_by_simulation():
    rng = np.random.default_rng(16)
    covered = 0
    for _ in range(2000):
        fp8 = stats.Proportion(int(rng.binomial(250, 0.72)), 250)
        bf16 = stats.Proportion(int(rng.binomial(250, 0.75)), 250)
        covered += stats.unpaired_difference(fp8, bf16).contains(-0.03)
    assert 0.93 <= covered / 2000 <= 0.98


REAL = SAMPLES / "real"


def test_recorded_real_run_pairs_fp8_and_bf16_per_problem():
    fp8, bf16 = stats.load_samples(REAL / "samples_fp8.jsonl"), stats.load_samples(REAL / "samples_bf16.jsonl")
    counts = stats.pair(fp8, bf16)
    assert (counts.n, counts.fp8_rate, counts.bf16_rate) == (100, 0.79, 0.77)
    assert (counts.fp8_only, counts.bf16_only) == (2, 0)
    verdict = stats.paired_accuracy_verdict(fp8, bf16, max_drop=0.05)
    assert verdict.status == "passed"
    assert "FP8 - BF16 = +2.0 points" in verdict.message
