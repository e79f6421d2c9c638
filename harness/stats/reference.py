"""Which BF16 reference an FP8 accuracy gate is judged against, in the issue's order.

1. the BF16 twin of the same run (per-problem samples: paired test);
2. else the last passing BF16 run of the same model, device, parallelism and stack in history
   (paired when its samples file is still readable here, else unpaired on its figures);
3. else an `expected` BF16 accuracy from the matrix;
4. else `unknown`, which is never a pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from harness.stats.proportion import Proportion
from harness.stats.samples import Samples
from harness.stats.samples import SamplesError
from harness.stats.verdict import ALPHA
from harness.stats.verdict import DEFAULT_METRIC
from harness.stats.verdict import Verdict
from harness.stats.verdict import expected_accuracy_verdict
from harness.stats.verdict import missing_reference
from harness.stats.verdict import paired_accuracy_verdict
from harness.stats.verdict import unpaired_accuracy_verdict


@dataclass(frozen=True)
class Bf16Reference:
    """A BF16 figure to judge FP8 against; `source` is shown in the verdict."""

    source: str
    samples: Samples | None = None
    accuracy: Proportion | None = None
    expected: float | None = None


def drop_vs_bf16_verdict(
    fp8_accuracy: Proportion,
    fp8_samples: Samples | None,
    references: Sequence[Bf16Reference | None],
    max_drop: float,
    *,
    cell: str = "",
    bf16_cell: str = "",
    metric: str = DEFAULT_METRIC,
    alpha: float = ALPHA,
    require_non_inferiority: bool = False,
) -> Verdict:
    """Judge FP8 against the first usable reference (the order above); none usable: unknown."""
    notes: list[str] = []
    for ref in references:
        if ref is None:
            continue
        if ref.samples is not None and fp8_samples is not None:
            try:
                return paired_accuracy_verdict(
                    fp8_samples, ref.samples, max_drop, reference=ref.source, alpha=alpha,
                    metric=metric, cell=cell, require_non_inferiority=require_non_inferiority,
                )
            except SamplesError as exc:
                notes.append(f"not paired: {exc}")
        if ref.accuracy is not None and ref.accuracy.n > 0:
            source = "; ".join([ref.source, *notes])
            return unpaired_accuracy_verdict(
                fp8_accuracy, ref.accuracy, max_drop, reference=source, alpha=alpha,
                metric=metric, cell=cell, require_non_inferiority=require_non_inferiority,
            )
        if ref.expected is not None:
            return expected_accuracy_verdict(
                fp8_accuracy, ref.expected, max_drop, reference=ref.source, alpha=alpha,
                metric=metric, cell=cell, require_non_inferiority=require_non_inferiority,
            )
    twin = f" {bf16_cell}" if bf16_cell else ""
    return missing_reference(
        metric,
        cell,
        "no BF16 reference: no BF16 twin in this run, no passing BF16 run of the same model, "
        "device, parallelism and stack in the history database, no `expected` in the matrix",
        f"add the BF16 cell{twin} to the matrix, import an earlier run with "
        f"`harness history import`, or set gates: {metric}: expected",
    )
