"""The qualification report a release manager signs: verdict, what ran where, every gate with
its bound, FP8 against its BF16 baseline, what was emulated, and the trend over earlier runs.

Written as `report.md` (and `trend.png` when earlier runs of the matrix exist) beside
summary.md at the end of every run; `harness report --qualification` prints it again.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.cell import bf16_twin_id
from harness.report.markdown import cells_table
from harness.report.markdown import failure_notes
from harness.report.markdown import status_counts
from harness.results import ResultStore
from harness.results import StageResult
from harness.results import read_records
from harness.results import stage_results
from harness.results import write_atomic
from harness.run_ending import ending_line

# metrics followed across runs: (stage, metric, label)
TREND_METRICS: tuple[tuple[str, str, str], ...] = (
    ("accuracy", "exact_match_strict", "strict exact match"),
    ("throughput", "output_throughput@c1", "output tok/s @c1"),
)
HISTORY_RUNS = 10  # earlier runs of the same matrix shown in the trend
TREND_PNG = "trend.png"


@dataclass(frozen=True)
class Run:
    """One stored run: its context line and its stage records."""

    run_id: str
    context: Mapping[str, Any]
    results: list[StageResult]


def load_run(store: ResultStore, run_id: str) -> Run:
    path = store.root / run_id / "results.jsonl"
    records = list(read_records(path))
    context = next((r for r in records if r.get("kind") == "run"), {})
    end = next((r for r in reversed(records) if r.get("kind") == "end"), None)
    if end is not None:  # how the run ended (interrupted, internal error) rides with its context
        context = {**context, "end": end}
    return Run(run_id, context, stage_results(path))


def earlier_runs(store: ResultStore, run: Run, limit: int = HISTORY_RUNS) -> list[Run]:
    """Earlier runs of the same matrix on the same backend, oldest first (at most `limit`)."""
    same = []
    for run_id in reversed(store.runs()):
        if run_id >= run.run_id:
            continue
        path = store.root / run_id / "results.jsonl"
        context = next(read_records(path), {})
        if (context.get("matrix_name"), context.get("backend")) != (
            run.context.get("matrix_name"),
            run.context.get("backend"),
        ):
            continue
        same.append(Run(run_id, context, stage_results(path)))
        if len(same) == limit:
            break
    return same[::-1]


def verdict(run: Run) -> tuple[str, str]:
    """QUALIFIED only when every stage of every cell ran and passed its gates."""
    counts = status_counts(run.results)
    cells = len({r.cell for r in run.results})
    total = len(run.results)
    ending = ending_line(run.context.get("end") or {})
    if ending and not counts["failed"]:
        return "INCOMPLETE", f"the run did not complete: {ending}"
    if counts["failed"]:
        failed_cells = len({r.cell for r in run.results if r.status == "failed"})
        return "NOT QUALIFIED", f"{counts['failed']} stage(s) failed in {failed_cells} cell(s)"
    if counts["skipped"] or not total:
        return "INCOMPLETE", (
            f"{counts['skipped']} of {total} stage(s) skipped: a skipped stage qualifies nothing"
        )
    unknown = unknown_gates(run)
    if unknown:
        first = unknown[0]
        return "INCOMPLETE", (
            f"{len(unknown)} gate(s) could not be evaluated (an unknown gate qualifies nothing): "
            f"{first[0]} {first[1]}: {first[2]}"
        )
    expected = int(run.context.get("matrix_stages") or 0)  # absent in records before 2026-12
    if total < expected:
        how = " ".join(run.context.get("selection") or ()) or "the run ended early"
        return "INCOMPLETE", (
            f"{total} of the matrix's {expected} stages ran ({how}); they all passed, but a "
            "part of the matrix qualifies only that part"
        )
    return "QUALIFIED", f"all {total} stages of {cells} cell(s) passed their gates"


def unknown_gates(run: Run) -> list[tuple[str, str, str]]:
    """(cell, metric, what reference was missing and how to provide it) of every UNKNOWN gate."""
    return [
        (r.cell, str(g.get("metric")), str(g.get("missing") or g.get("message") or ""))
        for r in run.results
        for g in r.gates
        if g.get("status") == "unknown"
    ]


def _stack_lines(run: Run) -> list[str]:
    """The serving stack of every cell that names one (gaudi: vllm-gaudi or vllm-fork)."""
    stacks = {r.cell: r.metrics["stack"] for r in run.results
              if r.stage == "serving" and r.metrics.get("stack")}
    if not stacks:
        return []
    return ["", "Serving stack per cell:", "", *(f"- {c}: {s}" for c, s in stacks.items())]


def _emulation(run: Run) -> dict[str, Mapping[str, Any]]:
    """Cells whose serving numbers rest on something this host emulated, with the facts."""
    out: dict[str, Mapping[str, Any]] = {}
    for r in run.results:
        if r.stage == "serving" and r.metrics.get("emulated", "none") != "none":
            out[r.cell] = r.metrics
    return out


def context_rows(run: Run) -> list[tuple[str, str]]:
    """The run's context as (name, value) rows: what ran, where, with which stack."""
    c = run.context
    stage_s = sum(r.duration_s for r in run.results)
    rows = [
        ("run", run.run_id),
        (
            "matrix",
            f"{c.get('matrix_name', '?')} ({c.get('matrix', '?')}, "
            f"sha256 {c.get('matrix_sha256', '?')})",
        ),
        ("backend", c.get("backend", "?")),
        ("selection", " ".join(c.get("selection") or ()) or "the whole matrix"),
        ("host", f"{c.get('host', '?')}: {c.get('inventory', '?')}"),
        ("harness", f"{c.get('harness_version', '?')} at commit {c.get('commit', '?')}"),
        ("python", c.get("python", "?")),
        ("started", c.get("started", "?")),
        ("wall time", _wall(run)),
        (
            "stage time",
            f"{stage_s / 60:.1f} min in {len(run.results)} stage(s) (servers' "
            "start-up is not a stage's)",
        ),
    ]
    for name, version in sorted((c.get("versions") or {}).items()):
        rows.append((name, version or "not installed"))
    return rows


def _context_lines(run: Run) -> list[str]:
    return ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in context_rows(run))]


def _wall(run: Run) -> str:
    """From the run's start to the end of its last recorded stage."""
    try:
        start = dt.datetime.fromisoformat(str(run.context["started"]))
        end = max(
            dt.datetime.fromisoformat(r.started) + dt.timedelta(seconds=r.duration_s)
            for r in run.results
        )
    except (KeyError, ValueError):  # no stage, or an old record without times
        return "?"
    return f"{(end - start).total_seconds() / 60:.1f} min"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "not measured" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _gate_lines(run: Run) -> list[str]:
    lines = ["| cell | metric | value | bound | result |", "|---|---|---|---|---|"]
    for r in run.results:
        for g in r.gates:
            if g.get("status") == "unknown":
                result = f"**UNKNOWN**: {g.get('missing') or 'reference missing'}"
            elif g.get("bound") == "vs bf16":  # records before 2026-12: nothing was compared
                result = "n/a (the baseline)" if "/bf16-" in r.cell else "n/a (no BF16 cell ran)"
            else:
                result = "pass" if g.get("passed") else "**FAIL**"
            bound = str(g.get("bound"))
            if g.get("reference"):
                bound += f" (vs {g['reference']})"
            lines.append(
                f"| {r.cell} | {g.get('metric')} | {_fmt(g.get('value'))} | {bound} | {result} |"
            )
    return lines if len(lines) > 2 else ["No gate was evaluated in this run."]


def _metric(run: Run, cell: str, stage: str, name: str) -> float | None:
    for r in run.results:
        if r.cell == cell and r.stage == stage and isinstance(r.metrics.get(name), int | float):
            return float(r.metrics[name])
    return None


def _fp8_lines(run: Run) -> list[str]:
    """Each FP8 cell beside its BF16 twin: accuracy drop and throughput ratio."""
    cells = list(dict.fromkeys(r.cell for r in run.results))
    rows = []
    for cell in cells:
        twin = bf16_twin_id(cell)
        if twin == cell or twin not in cells:
            continue
        acc, acc0 = (_metric(run, c, "accuracy", "exact_match_strict") for c in (cell, twin))
        tps, tps0 = (_metric(run, c, "throughput", "output_throughput@c1") for c in (cell, twin))
        drop = f"{(acc - acc0) * 100:+.1f} points" if acc is not None and acc0 else "-"
        ratio = f"{tps / tps0:.2f}x" if tps is not None and tps0 else "-"
        rows.append(
            f"| {cell} | {_fmt(acc0)} | {_fmt(acc)} | {drop} | {_fmt(tps0)} | "
            f"{_fmt(tps)} | {ratio} |"
        )
    if not rows:
        return ["No FP8 cell ran beside a BF16 cell of the same model, device and parallelism."]
    return [
        "| FP8 cell | BF16 strict EM | FP8 strict EM | change | BF16 tok/s @c1 | FP8 tok/s @c1 "
        "| FP8/BF16 |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ]


def _trend_lines(run: Run, history: list[Run], plotted: bool) -> list[str]:
    runs = [*history, run]
    cells = list(dict.fromkeys(r.cell for r in run.results))
    lines = [
        f"Last {len(runs)} run(s) of this matrix on this backend, oldest first.",
        "",
        "| run | commit | verdict | passed | failed | skipped |",
        "|---|---|---|---|---|---|",
    ]
    for x in runs:
        counts = status_counts(x.results)
        lines.append(
            f"| {x.run_id} | {x.context.get('commit', '?')} | {verdict(x)[0]} | "
            f"{counts['passed']} | {counts['failed']} | {counts['skipped']} |"
        )
    if plotted:
        lines += ["", f"![trend]({TREND_PNG})"]
    for stage, name, label in TREND_METRICS:
        shown = [c for c in cells if _metric(run, c, stage, name) is not None]
        if not shown:
            continue
        lines += [
            "",
            f"**{label}**",
            "",
            "| cell | " + " | ".join(x.run_id for x in runs) + " |",
            "|---|" + "---|" * len(runs),
        ]
        for cell in shown:
            vals = [_metric(x, cell, stage, name) for x in runs]
            lines.append(
                f"| {cell} | " + " | ".join("-" if v is None else f"{v:.4g}" for v in vals) + " |"
            )
    return lines


def render(run: Run, history: list[Run] | None = None, plotted: bool = False) -> str:
    history = history or []
    word, why = verdict(run)
    lines = [
        f"# Qualification report: {run.context.get('matrix_name', '?')}",
        "",
        f"**Verdict: {word}**: {why}.",
    ]
    if run.context.get("backend") == "cpu":
        lines += [
            "",
            "This ran on the **cpu** backend: the whole pipeline in miniature (models "
            "the harness trains, vLLM's CPU build, INC on CPU). It rehearses the procedure; "
            "it does not qualify Gaudi hardware or a production model.",
        ]
    emulated = _emulation(run)
    if emulated:
        lines += ["", "## Emulated on this host", ""]
        for cell, facts in emulated.items():
            lines.append(
                f"- **{cell}**: {facts.get('emulated')}; KV cache: "
                f"{facts.get('kv_cache', '?')}; weights: {facts.get('weights', '?')}"
            )
    lines += [
        "",
        "## Run",
        "",
        *_context_lines(run),
        "",
        "## Cells",
        "",
        *cells_table(run.results),
        *_stack_lines(run),
        "",
        "## Gates",
        "",
        *_gate_lines(run),
        "",
        "## FP8 against BF16",
        "",
        *_fp8_lines(run),
    ]
    notes = failure_notes(run.results)
    if notes:
        lines += ["", "## Failures and skips", "", *notes]
    if history:
        lines += ["", "## Trend", "", *_trend_lines(run, history, plotted)]
    return "\n".join(lines) + "\n"


def plot_trend(run: Run, history: list[Run], path: Path) -> bool:
    """One panel a trend metric, one line a cell; False when there is nothing to draw."""
    runs = [*history, run]
    panels = []
    for stage, name, label in TREND_METRICS:
        series = {}
        for cell in dict.fromkeys(r.cell for r in run.results):
            vals = [_metric(x, cell, stage, name) for x in runs]
            if sum(v is not None for v in vals) >= 2:
                series[cell] = vals
        if series:
            panels.append((label, series))
    if not panels:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 3.2 * len(panels)), squeeze=False)
    x = list(range(len(runs)))
    for ax, (label, series) in zip(axes[:, 0], panels, strict=True):
        for cell, vals in series.items():
            # a cell absent from a run (a --cells run) is a gap, not a break in its line
            xs = [i for i, v in zip(x, vals, strict=True) if v is not None]
            ax.plot(xs, [v for v in vals if v is not None], marker="o", label=cell)
        ax.set_ylabel(label)
        ax.set_xticks(x, [r.run_id[:15] for r in runs], rotation=30, ha="right", fontsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)
    return True


def write_report(
    run: Run,
    history: list[Run],
    directory: Path,
    against: Sequence[str] = (),
    units: Sequence[str] = (),
) -> Path:
    """report.md (and trend.png) in the run's directory, each written atomically; `against`:
    the section on this run against the history database (harness/report/against_history.py)."""
    plotted = bool(history) and plot_trend(run, history, directory / TREND_PNG)
    path = directory / "report.md"
    text = render(run, history, plotted)
    if against:
        text += "\n## Against history\n\n" + "\n".join(against) + "\n"
    if units:  # a `pytest -n` run: its work units and how busy the cards were
        text += "\n" + "\n".join(units) + "\n"
    write_atomic(path, text)
    return path
