"""Gate verdicts that know their uncertainty: passed, failed, or unknown (never a silent pass).

Pure functions for the gates code: each takes figures already measured and returns a
:class:`Verdict`. The FP8-vs-BF16 rule is the same for every kind of reference: FP8 fails when it
is *significantly* worse than the reference (exact McNemar, or an interval that excludes no
drop) *and* its drop is larger than `max_drop`. With `require_non_inferiority` a pass also needs
the interval to show the drop is at most `max_drop` (small samples then fail, not pass).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from typing import TYPE_CHECKING
from typing import Literal

from harness.stats.difference import PairedTest
from harness.stats.difference import paired_test
from harness.stats.difference import unpaired_difference
from harness.stats.proportion import Interval
from harness.stats.proportion import Proportion
from harness.stats.samples import Samples
from harness.stats.samples import pair

if TYPE_CHECKING:
    from harness.gates import GateOutcome

Status = Literal["passed", "failed", "unknown"]
ALPHA = 0.05
DEFAULT_METRIC = "accuracy.exact_match_strict"


@dataclass(frozen=True)
class Verdict:
    """One gate's outcome; `reference` says what it was judged against (empty: nothing)."""

    metric: str
    status: Status
    value: float
    bound: str
    message: str
    reference: str = ""
    details: Mapping[str, float | int | str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def as_dict(self) -> dict[str, object]:
        """A results.jsonl gate entry (GateOutcome's keys), plus `reference` and the figures
        the verdict was decided from."""
        out: dict[str, object] = {
            "metric": self.metric,
            "value": self.value,
            "passed": self.passed,
            "status": self.status,
            "bound": self.bound,
            "message": self.message,
            "reference": self.reference,
            **dict(self.details),
        }
        if self.status == "unknown":
            out["missing"] = self.message
        return out

    def as_outcome(self) -> GateOutcome:
        """The gate outcome the recorder keeps (`rec.gates.append(verdict.as_outcome())`)."""
        from harness.gates import GateOutcome
        from harness.gates import GateStatus

        return GateOutcome(
            self.metric, self.value, self.passed, self.bound, self.message,
            status=GateStatus(self.status),
            missing=self.message if self.status == "unknown" else "",
            reference=self.reference,
            details=dict(self.details),
        )


def _pct(x: float) -> str:
    return f"{x * 100:.1f}"


def _change(drop: Interval) -> str:
    """FP8 minus BF16 in points with its interval, e.g. `-3.2 points (95% CI -6.0 to -0.4)`."""
    return (
        f"FP8 - BF16 = {-drop.point * 100:+.1f} points "
        f"(95% CI {-drop.high * 100:+.1f} to {-drop.low * 100:+.1f})"
    )


def interval_verdict(
    accuracy: Proportion,
    *,
    min_value: float | None = None,
    min_lower_bound: float | None = None,
    metric: str = DEFAULT_METRIC,
    cell: str = "",
) -> Verdict:
    """Bound the point estimate (`min`) and/or the Wilson lower bound (`min_lower_bound`)."""
    ci = accuracy.wilson()
    checks = []
    if min_value is not None:
        checks.append((ci.point >= min_value, f">= {min_value:g}"))
    if min_lower_bound is not None:
        checks.append((ci.low >= min_lower_bound, f"CI low >= {min_lower_bound:g}"))
    if not checks:
        raise ValueError("interval_verdict needs min_value or min_lower_bound")
    ok = all(passed for passed, _ in checks)
    bound = " and ".join(b for _, b in checks)
    word = "ok" if ok else "FAILED"
    message = (
        f"{cell}: {metric} = {ci.point:.4g} (n={accuracy.n}, 95% CI {ci.low:.4g}-{ci.high:.4g}) "
        f"(gate {bound}) {word}"
    )
    details = {"n": accuracy.n, "ci95_low": round(ci.low, 4), "ci95_high": round(ci.high, 4)}
    return Verdict(metric, "passed" if ok else "failed", ci.point, bound, message, "", details)


def _decide(
    worse: bool, drop: Interval, max_drop: float, strict: bool
) -> tuple[Status, str]:
    if worse and drop.point > max_drop:
        return "failed", "significantly worse, by more than allowed"
    if drop.high <= max_drop:
        return "passed", "not worse than allowed (whole interval within the allowance)"
    if strict:
        return "failed", "not shown to be within the allowance (require_non_inferiority)"
    if drop.point > max_drop:
        return "passed", "drop larger than allowed but within noise at this n"
    return "passed", "drop within the allowance"


def paired_accuracy_verdict(
    fp8: Samples,
    bf16: Samples,
    max_drop: float,
    *,
    alpha: float = ALPHA,
    metric: str = DEFAULT_METRIC,
    cell: str = "",
    reference: str = "BF16 cell of this run",
    require_non_inferiority: bool = False,
) -> Verdict:
    """FP8 against BF16 per problem: exact McNemar and Newcombe's paired interval.

    Raises SamplesError when the two files did not ask the same problems.
    """
    test: PairedTest = paired_test(pair(fp8, bf16), 1 - alpha)
    c = test.counts
    drop = Interval(-test.difference.point, -test.difference.high, -test.difference.low)
    worse = test.p_value < alpha and c.bf16_only > c.fp8_only
    status, why = _decide(worse, drop, max_drop, require_non_inferiority)
    message = (
        f"{cell}: {metric} FP8 {c.fp8_rate:.4g} vs BF16 {c.bf16_rate:.4g} on the same "
        f"{c.n} problems: {_change(drop)}, {c.bf16_only} solved "
        f"only by BF16, {c.fp8_only} only by FP8, exact McNemar p={test.p_value:.3g}: {why} "
        f"(allowed drop {_pct(max_drop)} points; reference: {reference})"
    )
    details: dict[str, float | int | str] = {
        "test": "paired",
        "n": c.n,
        "fp8_only": c.fp8_only,
        "bf16_only": c.bf16_only,
        "p_value": round(test.p_value, 6),
        "drop": round(drop.point, 4),
        "drop_ci95_low": round(drop.low, 4),
        "drop_ci95_high": round(drop.high, 4),
    }
    bound = f"drop <= {max_drop:g} or not significant (alpha {alpha:g})"
    return Verdict(metric, status, c.fp8_rate, bound, message, reference, details)


def unpaired_accuracy_verdict(
    fp8: Proportion,
    bf16: Proportion,
    max_drop: float,
    *,
    alpha: float = ALPHA,
    metric: str = DEFAULT_METRIC,
    cell: str = "",
    reference: str = "",
    require_non_inferiority: bool = False,
) -> Verdict:
    """FP8 against a BF16 figure without per-problem samples (e.g. a run on another host)."""
    diff = unpaired_difference(fp8, bf16, 1 - alpha)
    drop = Interval(-diff.point, -diff.high, -diff.low)
    status, why = _decide(drop.low > 0, drop, max_drop, require_non_inferiority)
    message = (
        f"{cell}: {metric} FP8 {fp8.value:.4g} (n={fp8.n}) vs BF16 {bf16.value:.4g} "
        f"(n={bf16.n}), unpaired: {_change(drop)}: {why} "
        f"(allowed drop {_pct(max_drop)} points; reference: {reference})"
    )
    details: dict[str, float | int | str] = {
        "test": "unpaired",
        "n": fp8.n,
        "drop": round(drop.point, 4),
        "drop_ci95_low": round(drop.low, 4),
        "drop_ci95_high": round(drop.high, 4),
    }
    bound = f"drop <= {max_drop:g} or not significant (alpha {alpha:g})"
    return Verdict(metric, status, fp8.value, bound, message, reference, details)


def expected_accuracy_verdict(
    fp8: Proportion,
    expected: float,
    max_drop: float,
    *,
    alpha: float = ALPHA,
    metric: str = DEFAULT_METRIC,
    cell: str = "",
    reference: str = "matrix expected",
    require_non_inferiority: bool = False,
) -> Verdict:
    """FP8 against a fixed BF16 accuracy (the matrix's `expected`): Wilson interval of FP8."""
    ci = fp8.wilson(1 - alpha)
    drop = Interval(expected - ci.point, expected - ci.high, expected - ci.low)
    status, why = _decide(drop.low > 0, drop, max_drop, require_non_inferiority)
    message = (
        f"{cell}: {metric} FP8 {ci.point:.4g} (n={fp8.n}) vs expected BF16 {expected:.4g}: "
        f"{_change(drop)}: {why} (allowed drop {_pct(max_drop)} points; "
        f"reference: {reference})"
    )
    details: dict[str, float | int | str] = {
        "test": "expected",
        "n": fp8.n,
        "drop": round(drop.point, 4),
        "drop_ci95_low": round(drop.low, 4),
        "drop_ci95_high": round(drop.high, 4),
    }
    bound = f"drop <= {max_drop:g} or not significant (alpha {alpha:g})"
    return Verdict(metric, status, ci.point, bound, message, reference, details)


def missing_reference(metric: str, cell: str, missing: str, how_to: str) -> Verdict:
    """`unknown`: the gate could not be evaluated; says what was missing and how to provide it."""
    return Verdict(
        metric,
        "unknown",
        math.nan,
        "reference",
        f"{cell}: {metric}: not evaluated, {missing} ({how_to})",
    )
