"""What the gates ask of the history: a BF16 reference and a noise band, like with like.

These bridge the run's own records, the history database and harness.stats, so the gates code
makes one call per gate:

    verdict = fp8_accuracy_verdict(fp8, twin, run_dir, history, like, spec.max_drop_vs_bf16,
                                   expected=matrix_expected)
    verdicts = history_regressions(history, result, like, floors)

A history that cannot be read counts as no reference (the verdict says `unknown` and why), never
as an error that costs the run.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.cell import bf16_twin_id
from harness.history.context import RunContext
from harness.history.context import differences
from harness.history.store import History
from harness.history.url import HistoryError
from harness.results import StageResult
from harness.stats.noise import regression_verdict
from harness.stats.proportion import Proportion
from harness.stats.reference import Bf16Reference
from harness.stats.reference import drop_vs_bf16_verdict
from harness.stats.samples import Samples
from harness.stats.samples import SamplesError
from harness.stats.samples import find_samples_file
from harness.stats.samples import load_samples
from harness.stats.verdict import Verdict

# accuracy metric -> lm-eval filter of its per-problem samples
FILTERS = {"exact_match_strict": "strict-match", "exact_match_flexible": "flexible-extract"}
OUTPUT_ARTIFACT = "lm_eval_output"


def accuracy_of(metrics: Mapping[str, Any], name: str = "exact_match_strict") -> Proportion | None:
    """k of n from a stage's recorded accuracy and sample count."""
    rate, n = metrics.get(name), metrics.get("samples")
    if not isinstance(rate, int | float) or not isinstance(n, int | float) or n <= 0:
        return None
    return Proportion.from_rate(float(rate), int(n))


def samples_of(
    metrics: Mapping[str, Any], artifacts: Mapping[str, str], run_dir: Path | None,
    name: str = "exact_match_strict",
) -> Samples | None:
    """Per-problem correctness from the stage's lm-eval output, when it is still readable."""
    rel = artifacts.get(OUTPUT_ARTIFACT)
    if not rel:
        return None
    out = Path(rel) if Path(rel).is_absolute() or run_dir is None else run_dir / rel
    task = metrics.get("task")
    try:
        path = find_samples_file(out, str(task) if task else None)
        return load_samples(path, FILTERS.get(name, "strict-match"))
    except SamplesError:
        return None


def same_run_reference(
    twin: StageResult | None, run_dir: Path, name: str = "exact_match_strict"
) -> Bf16Reference | None:
    """The BF16 twin of this run (passed), with its samples when they were logged."""
    if twin is None or twin.status != "passed":
        return None
    accuracy = accuracy_of(twin.metrics, name)
    samples = samples_of(twin.metrics, twin.artifacts, run_dir, name)
    if accuracy is None and samples is None:
        return None
    return Bf16Reference(f"BF16 cell {twin.cell} of this run", samples, accuracy)


def history_reference(
    history: History | None, fp8_cell: str, like: RunContext, name: str = "exact_match_strict"
) -> Bf16Reference | None:
    """The last passing BF16 run of the same model, device, parallelism and stack."""
    if history is None:
        return None
    try:
        stored = history.last_passing_bf16(fp8_cell, like)
    except HistoryError:
        return None
    if stored is None:
        return None
    run_dir = Path(stored.source_dir) if stored.source_dir else None
    samples = samples_of(stored.metrics, stored.artifacts, run_dir, name)
    accuracy = accuracy_of(stored.metrics, name)
    if accuracy is None and samples is None:
        return None
    source = f"BF16 run {stored.run.run_id} (commit {stored.run.commit or '?'}) from history"
    return Bf16Reference(source, samples, accuracy)


def differs_note(history: History | None, cell: str, metric: str, like: RunContext) -> str:
    """Why an earlier run of `cell` was not comparable: what differs from this run, if any."""
    if history is None:
        return ""
    try:
        found = history.series(cell, metric, 1, before_run=like.run_id).get(cell, [])
    except HistoryError:
        return ""
    if not found:
        return ""
    p = found[-1]
    other = RunContext(p.run_id, host_class=p.host_class, device=p.device, versions=p.versions)
    moved = differences(other, like)
    if not moved:
        return ""
    return f"; the last run of {cell} ({p.run_id}) is not comparable: {', '.join(moved)}"


def _with_note(verdict: Verdict, note: str) -> Verdict:
    if verdict.status != "unknown" or not note:
        return verdict
    return dataclasses.replace(verdict, message=verdict.message + note)


def fp8_accuracy_verdict(
    fp8: StageResult,
    twin: StageResult | None,
    run_dir: Path,
    history: History | None,
    like: RunContext,
    max_drop: float,
    *,
    expected: float | None = None,
    name: str = "exact_match_strict",
    require_non_inferiority: bool = False,
) -> Verdict:
    """The FP8-vs-BF16 gate of one FP8 accuracy result: same run, else history, else the
    matrix's expected value, else unknown."""
    metric = f"accuracy.{name}"
    accuracy = accuracy_of(fp8.metrics, name)
    bf16_cell = bf16_twin_id(fp8.cell)
    if accuracy is None:
        return Verdict(metric, "unknown", float("nan"), "vs bf16",
                       f"{fp8.cell}: {metric}: no accuracy and sample count recorded")
    references = [
        same_run_reference(twin, run_dir, name),
        history_reference(history, fp8.cell, like, name),
        None if expected is None else Bf16Reference("matrix expected", expected=expected),
    ]
    verdict = drop_vs_bf16_verdict(
        accuracy,
        samples_of(fp8.metrics, fp8.artifacts, run_dir, name),
        references,
        max_drop,
        cell=fp8.cell,
        bf16_cell=bf16_cell,
        metric=metric,
        require_non_inferiority=require_non_inferiority,
    )
    return _with_note(verdict, differs_note(history, bf16_cell, metric, like))


def history_regressions(
    history: History | None,
    result: StageResult,
    like: RunContext,
    floors: Mapping[str, float],
) -> list[Verdict]:
    """Every metric of `result` named (or globbed) in `floors` against its noise band.

    `floors` maps `<stage>.<metric>` patterns to the practical floor in percent (from
    `--compare-fail`, e.g. `throughput.output_throughput@*: 5`); a metric matching no pattern is
    not judged. Without a history every judged metric is `unknown`.
    """
    verdicts = []
    for name, value in sorted(result.metrics.items()):
        if not isinstance(value, int | float) or isinstance(value, bool):
            continue
        key = f"{result.stage}.{name}"
        floor = next(
            (f for pattern, f in floors.items()
             if fnmatch.fnmatchcase(key, pattern) or key.split("@")[0] == pattern),
            None,
        )
        if floor is None:
            continue
        try:
            history_values = (
                [] if history is None else history.baseline_values(result.cell, key, like)
            )
        except HistoryError:
            history_values = []
        verdict = regression_verdict(
            key, float(value), history_values, floor_pct=abs(floor), cell=result.cell,
            reference=f"history of {like.host_class}",
        )
        if not history_values:
            verdict = _with_note(verdict, differs_note(history, result.cell, key, like))
        verdicts.append(verdict)
    return verdicts
