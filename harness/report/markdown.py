"""Markdown summary of a run: cells x stages with status and key metrics."""

from __future__ import annotations

from collections.abc import Iterable

from harness.cell import STAGE_NAMES
from harness.results import StageResult

STATUS_MARK = {"passed": "PASS", "failed": "FAIL", "skipped": "skip"}
# The metrics that matter most per stage, shown in the table cell (others stay in results.jsonl).
KEY_METRICS: dict[str, tuple[str, ...]] = {
    "preflight": ("checks_fail",),
    "collectives": ("busbw_gbps", "algbw_gbps", "nw_bandwidth_gbps", "algo_bandwidth_gbps"),
    "calibration": ("nodes_measured", "experts_covered", "calibration_s"),
    "serving": ("ready_s", "emulated"),
    "accuracy": ("exact_match_strict", "exact_match_flexible"),
    "throughput": ("output_throughput@c1", "output_throughput@c32", "p99_ttft_ms@c1"),
}


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _cell_text(result: StageResult) -> str:
    text = STATUS_MARK.get(result.status, result.status)
    shown = [
        f"{k}={_fmt(result.metrics[k])}"
        for k in KEY_METRICS.get(result.stage, ())
        if k in result.metrics
    ]
    if shown:
        text += " " + ", ".join(shown)
    return text.replace("|", "\\|")


def cells_table(results: list[StageResult]) -> list[str]:
    """One row a cell, one column a stage that ran somewhere in the run."""
    by_cell: dict[str, dict[str, StageResult]] = {}
    for r in results:
        by_cell.setdefault(r.cell, {})[r.stage] = r
    stages = [s for s in STAGE_NAMES if any(s in row for row in by_cell.values())]
    if not stages:  # nothing ran (e.g. interrupted while the first server started): no table
        return []
    lines = ["| cell | " + " | ".join(stages) + " |", "|---|" + "---|" * len(stages)]
    for cell, row in by_cell.items():
        cols = [_cell_text(row[s]) if s in row else "n/a" for s in stages]
        lines.append(f"| {cell} | " + " | ".join(cols) + " |")
    return lines


def failure_notes(results: list[StageResult]) -> list[str]:
    """Every failure and skip with its reason (first lines), and every gate that could not be
    evaluated with the reference it lacked, one bullet each."""
    lines = []
    for r in results:
        for g in r.gates:
            if g.get("status") == "unknown":
                lines.append(
                    f"- **{r.cell}** [{r.stage}] gate {g.get('metric')} UNKNOWN (not evaluated): "
                    f"{g.get('missing') or g.get('message')}"
                )
        if r.status == "passed" or not r.message:
            continue
        first = r.message.strip().splitlines()
        detail = " / ".join(line.strip() for line in first[:6])
        lines.append(f"- **{r.cell}** [{r.stage}] {STATUS_MARK[r.status]}: {detail}")
    return lines


def status_counts(results: list[StageResult]) -> dict[str, int]:
    return {k: sum(1 for r in results if r.status == k) for k in STATUS_MARK}


def render_summary(results: Iterable[StageResult], matrix: str, run_id: str) -> str:
    """The table release managers read: one row a cell, one column a stage, then the reasons."""
    results = list(results)
    counts = status_counts(results)
    cells = len({r.cell for r in results})
    lines = [
        f"# Qualification summary: {matrix} (run {run_id})",
        "",
        f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped "
        f"across {cells} cells",
        "",
        *cells_table(results),
    ]
    notes = failure_notes(results)
    if notes:
        lines += ["", "## Failures and skips", "", *notes]
    return "\n".join(lines) + "\n"
