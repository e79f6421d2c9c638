"""The figure sections of report.html: FP8 beside BF16, throughput and latency against
concurrency, per-request distributions, bandwidth per message size, calibration, trend."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from pathlib import Path

from harness.cell import bf16_twin_id
from harness.collectives.bandwidth import format_size
from harness.report import facts
from harness.report import htmlkit as k
from harness.report import svg
from harness.report.qualification import TREND_METRICS
from harness.report.qualification import Run
from harness.report.qualification import verdict
from harness.results import StageResult

ACCURACY = ("exact_match_strict", "exact_match_flexible")
LATENCY_CHARTS = (("ttft", "TTFT"), ("tpot", "TPOT"), ("e2el", "E2E latency"))
CALIBRATION_FACTS = (  # grouped into columns so the table fits the page
    ("measured", ("nodes_measured", "experts_covered")),
    ("set", ("world", "calibrated_world", "derived", "scale_files")),
    ("check", ("check_ok", "check_warnings", "qdq_rel_err")),
    ("time (s)", ("calibration_s", "derive_s")),
)
OPEN_CELLS = 4  # distributions shown unfolded for the first cells; the rest one click away


def _stage(run: Run, cell: str, stage: str) -> StageResult | None:
    return next((r for r in run.results if r.cell == cell and r.stage == stage), None)


def _cells(run: Run, stage: str) -> list[StageResult]:
    return [r for r in run.results if r.stage == stage]


def _interval(r: StageResult | None, metric: str) -> str:
    """The interval the record carries for an accuracy figure (metric or gate), else ''."""
    if r is None:
        return ""
    for g in r.gates:
        if str(g.get("metric", "")).endswith("." + metric) and facts.gate_interval(g):
            return facts.gate_interval(g)
    lo, hi = r.metrics.get(f"{metric}_lower"), r.metrics.get(f"{metric}_upper")
    return f"[{k.fmt(lo)}, {k.fmt(hi)}]" if lo is not None and hi is not None else ""


def fp8_vs_bf16(run: Run) -> str:
    """Each FP8 cell beside its BF16 twin: accuracy (with interval when recorded), the
    comparison gates and their status, throughput ratio at every concurrency."""
    cells = list(dict.fromkeys(r.cell for r in run.results))
    rows = []
    for cell in cells:
        twin = bf16_twin_id(cell)
        if twin == cell or twin not in cells:
            continue
        acc, acc0 = _stage(run, cell, "accuracy"), _stage(run, twin, "accuracy")
        tps, tps0 = _stage(run, cell, "throughput"), _stage(run, twin, "throughput")
        for metric in ACCURACY:
            a, a0 = (x.metrics.get(metric) if x else None for x in (acc, acc0))
            if a is None and a0 is None:
                continue
            change = (f"{(a - a0) * 100:+.1f} points"
                      if isinstance(a, int | float) and isinstance(a0, int | float) else "-")
            paired = [f"{g.get('bound')}: {facts.gate_status(g, cell)}" for g in
                      (acc.gates if acc else []) if "bf16" in str(g.get("bound", "")).lower()
                      or "bf16" in str(g.get("metric", "")).lower()]
            rows.append([escape(cell), escape(metric), k.esc(a0) + " " + _interval(acc0, metric),
                         k.esc(a) + " " + _interval(acc, metric), escape(change),
                         escape("; ".join(paired) or "-")])
        t = facts.by_concurrency(tps.metrics if tps else {}).get("output_throughput", {})
        t0 = facts.by_concurrency(tps0.metrics if tps0 else {}).get("output_throughput", {})
        for c in sorted(t.keys() & t0.keys()):
            ratio = f"{t[c] / t0[c]:.2f}x" if t0[c] else "-"
            rows.append([escape(cell), f"output tok/s @c{c}", k.esc(t0[c]), k.esc(t[c]),
                         escape(ratio), "-"])
    if not rows:
        return k.para("No FP8 cell ran beside a BF16 cell of the same model, device and "
                      "parallelism.")
    return k.table(["FP8 cell", "figure", "BF16", "FP8", "change", "comparison gate"], rows,
                   table_id="fp8-table")


def throughput(run: Run, run_dir: Path) -> str:
    results = [r for r in _cells(run, "throughput") if facts.by_concurrency(r.metrics)]
    if not results:
        return k.para("No throughput figure was recorded in this run.")
    series = {r.cell: facts.by_concurrency(r.metrics) for r in results}

    def chart(metric: str, label: str) -> str:
        return svg.line_chart(svg.Chart(
            label, "concurrency", label,
            [svg.Series(c, sorted(m.get(metric, {}).items())) for c, m in series.items()],
            log_x=True,
        ))

    parts = [chart("output_throughput", "output tok/s")]
    for key, label in LATENCY_CHARTS[:2]:
        for stat in ("median", "p99"):
            parts.append(chart(f"{stat}_{key}_ms", f"{stat} {label} (ms)"))
    parts.append("<h3>Per-request distributions</h3>")
    for i, r in enumerate(results):
        parts.append(f"<details{' open' if i < OPEN_CELLS else ''}><summary>"
                     f"{escape(r.cell)}</summary>{_distributions(run_dir, r)}</details>")
    return "".join(parts)


def _distributions(run_dir: Path, r: StageResult) -> str:
    detailed = facts.per_request(run_dir, r)
    out: list[str] = []
    if not detailed:
        return k.para("per-request data not recorded (no benchmark result file)", "missing")
    for c, data in detailed.items():
        if data is None:
            out.append(k.para(f"c={c}: per-request TTFT/TPOT not recorded (the benchmark ran "
                              "without --save-detailed)", "missing"))
            continue
        errors = f", {data.errors} failed" if data.errors else ""
        out.append(f"<p>c={c}: {len(data.ttft_ms)} requests{escape(errors)}</p>")
        out.append(svg.histogram(f"TTFT @c{c} (ms)", data.ttft_ms, "TTFT (ms)"))
        out.append(svg.histogram(f"TPOT @c{c} (ms)", data.tpot_ms, "TPOT (ms)"))
    return "".join(out)


def _floor(r: StageResult, metric: str) -> list[tuple[float, str]]:
    """The gate's lower bound on the headline bandwidth: the device's expected figure."""
    out = []
    for g in r.gates:
        bound = str(g.get("bound", ""))
        if not str(g.get("metric", "")).endswith(metric):
            continue
        if isinstance(g.get("expected"), int | float):  # when the record carries the figure
            out.append((float(g["expected"]), f"expected {g['expected']:g}"))
        if bound.startswith(">="):
            try:
                out.append((float(bound[2:].strip()), f"gate {bound}"))
            except ValueError:
                continue
    return out[:2]


def _bandwidth(run_dir: Path, r: StageResult) -> dict[str, list[tuple[float, float]]]:
    """{"busbw": [(size, GB/s)], "algbw": [...]} from bandwidth.json, else the @size metrics."""
    rows = facts.bandwidth_rows(run_dir, r)
    if rows:
        return {f: [(float(x["size_bytes"]), float(x[f"{f}_gbps"])) for x in rows]
                for f in ("busbw", "algbw")}
    out: dict[str, list[tuple[float, float]]] = {}
    for name, vals in facts.by_size(r.metrics).items():
        kind = "algbw" if "alg" in name else "busbw"
        out[kind] = sorted((float(s), v) for s, v in vals.items())
    return out


def collectives(run: Run, run_dir: Path) -> str:
    """Bus and algorithm bandwidth per message size, one line a cell, the gate's floor drawn."""
    results = _cells(run, "collectives")
    if not results:
        return k.para("No collective benchmark ran in this run.")
    figures = {r.cell: _bandwidth(run_dir, r) for r in results}
    floors = [f for r in results
              for f in _floor(r, next((n for n in r.metrics if "bus" in n or
                                       n.startswith("nw_")), "busbw"))]
    parts = []
    for kind, label in (("busbw", "bus bandwidth (GB/s)"), ("algbw", "algorithm bandwidth "
                                                                      "(GB/s)")):
        series = [svg.Series(c, f.get(kind, [])) for c, f in figures.items()]
        ticks = {x: format_size(int(x)) for s in series for x, _ in s.points}
        parts.append(svg.line_chart(svg.Chart(
            f"all_reduce {label} per message size", "message size", "GB/s", series,
            log_x=True, x_tick_labels=ticks,
            ref_lines=sorted(set(floors))[-2:] if kind == "busbw" else (),
        )))
    missing = [c for c, f in figures.items() if not f]
    if missing:
        parts.append(k.para(f"no per-size figures for: {', '.join(missing)}", "missing"))
    rows = [[escape(r.cell), escape(r.status), k.esc(r.metrics.get("nranks")),
             k.esc(r.metrics.get("size_bytes")), k.esc(r.metrics.get("data_verified"))]
            for r in results]
    parts.append(k.table(["cell", "status", "ranks", "headline size (bytes)", "data verified"],
                         rows))
    return "".join(parts)


def calibration(run: Run, run_dir: Path) -> str:
    results = _cells(run, "calibration")
    if not results:
        return k.para("No calibration ran in this run (BF16 cells have nothing to calibrate).")
    rows = [[escape(r.cell), escape(r.status), *(
        "<br>".join(f"{escape(m)}={k.esc(r.metrics[m])}" for m in names if m in r.metrics)
        or "-" for _, names in CALIBRATION_FACTS)] for r in results]
    head = ["cell", "status", *(group for group, _ in CALIBRATION_FACTS)]
    out = [k.table(head, rows, table_id="calibration-table")]
    for r in results:
        findings = facts.calibration_findings(run_dir, r)
        if findings is None:
            out.append(k.para(f"{r.cell}: check findings missing (no calibration.json)",
                              "missing"))
        elif findings:
            frows = [[k.esc(f.get("severity")), k.esc(f.get("code")), k.esc(f.get("message")),
                      k.esc(f.get("location"))] for f in findings]
            out.append(f"<h3>{escape(r.cell)}: check findings</h3>"
                       + k.table(["severity", "code", "message", "location"], frows))
        else:
            out.append(k.para(f"{r.cell}: the measurement check found nothing to report."))
    return "".join(out)


def _value(run: Run, cell: str, stage: str, name: str) -> float | None:
    r = _stage(run, cell, stage)
    v = r.metrics.get(name) if r else None
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def trend(run: Run, history: Sequence[Run]) -> str:
    """Earlier runs of the matrix with their verdicts, and the trend metrics per cell."""
    runs = [*history, run]
    rows = [[escape(x.run_id), k.esc(x.context.get("commit", "?")), escape(verdict(x)[0])]
            for x in runs]
    out = [k.table(["run", "commit", "verdict"], rows)]
    cells = list(dict.fromkeys(r.cell for r in run.results))
    labels = {float(i): x.run_id[:15] for i, x in enumerate(runs)}
    for stage, name, label in TREND_METRICS:
        series = []
        for cell in cells:
            pts = [(float(i), v) for i, x in enumerate(runs)
                   if (v := _value(x, cell, stage, name)) is not None]
            if pts:
                series.append(svg.Series(cell, pts))
        if series:
            out.append(svg.line_chart(svg.Chart(label, "run", label, series,
                                                x_tick_labels=labels)))
    return "".join(out)
