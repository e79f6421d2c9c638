"""Statistics for gates that know their noise: intervals, paired tests, noise bands, changes.

The functions the gates and the session call::

    from harness import stats

    ci = stats.wilson_interval(k=212, n=250)                     # accuracy with its 95% CI
    v = stats.paired_accuracy_verdict(fp8, bf16, max_drop=0.02)  # lm-eval samples, paired
    v = stats.drop_vs_bf16_verdict(acc, fp8, [same_run, from_history, expected], 0.02)
    s = stats.summarize_repeats([1012.0, 998.5, 1020.1])          # median of odd repeats
    v = stats.regression_verdict("output_throughput@c32", 950.0, history, floor_pct=5)
    cps = stats.change_points(series)

Every method is checked by simulation with fixed seeds (tests/unit/test_stats_*.py) and its
figures are printed by benchmarks/bench_stats.py.
"""

from harness.stats.changepoint import ChangePoint
from harness.stats.changepoint import change_points
from harness.stats.difference import PairedTest
from harness.stats.difference import mcnemar_exact
from harness.stats.difference import paired_difference
from harness.stats.difference import paired_test
from harness.stats.difference import unpaired_difference
from harness.stats.noise import NoiseBand
from harness.stats.noise import bad_direction
from harness.stats.noise import learn_band
from harness.stats.noise import regression_verdict
from harness.stats.proportion import Interval
from harness.stats.proportion import Proportion
from harness.stats.proportion import interval_metrics
from harness.stats.proportion import wilson_interval
from harness.stats.reference import Bf16Reference
from harness.stats.reference import drop_vs_bf16_verdict
from harness.stats.repeats import RepeatSummary
from harness.stats.repeats import combine_repeats
from harness.stats.repeats import repeat_metrics
from harness.stats.repeats import summarize_repeats
from harness.stats.samples import PairedCounts
from harness.stats.samples import Samples
from harness.stats.samples import SamplesError
from harness.stats.samples import find_samples_file
from harness.stats.samples import load_samples
from harness.stats.samples import pair
from harness.stats.verdict import Verdict
from harness.stats.verdict import expected_accuracy_verdict
from harness.stats.verdict import interval_verdict
from harness.stats.verdict import missing_reference
from harness.stats.verdict import paired_accuracy_verdict
from harness.stats.verdict import unpaired_accuracy_verdict

__all__ = [
    "Bf16Reference",
    "ChangePoint",
    "Interval",
    "NoiseBand",
    "PairedCounts",
    "PairedTest",
    "Proportion",
    "RepeatSummary",
    "Samples",
    "SamplesError",
    "Verdict",
    "bad_direction",
    "change_points",
    "combine_repeats",
    "drop_vs_bf16_verdict",
    "expected_accuracy_verdict",
    "find_samples_file",
    "interval_metrics",
    "interval_verdict",
    "learn_band",
    "load_samples",
    "mcnemar_exact",
    "missing_reference",
    "pair",
    "paired_accuracy_verdict",
    "paired_difference",
    "paired_test",
    "regression_verdict",
    "repeat_metrics",
    "summarize_repeats",
    "unpaired_accuracy_verdict",
    "unpaired_difference",
    "wilson_interval",
]
