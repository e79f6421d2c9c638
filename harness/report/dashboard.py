"""`harness dashboard -o DIR`: a static site of the history that CI can publish as it is.

index.html lists the runs by matrix with their verdicts; one page a matrix holds a trend chart
per cell and metric, with change points marked when a detector is available, and filters by
cell glob and metric that work offline (a few lines of inline script, no library).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from collections.abc import Sequence
from html import escape
from pathlib import Path

from harness.fileio import write_atomic
from harness.report import htmlkit as k
from harness.report import svg
from harness.report.dashboard_source import ChangePoints
from harness.report.dashboard_source import HistorySource
from harness.report.dashboard_source import Point
from harness.report.dashboard_source import RunSummary
from harness.report.dashboard_source import SeriesKey

DEFAULT_METRICS = (
    "accuracy.exact_match_strict", "accuracy.exact_match_flexible",
    "throughput.output_throughput@*", "throughput.median_ttft_ms@*",
    "throughput.p99_ttft_ms@*", "throughput.median_tpot_ms@*",
    "collectives.busbw_gbps", "collectives.nw_bandwidth_gbps", "serving.ready_s",
    "calibration.calibration_s",
)
TREND_W, TREND_H = 400, 220

FILTER_JS = """
(function(){
 var cell=document.getElementById('cell-glob'),metric=document.getElementById('metric'),
     count=document.getElementById('shown'),items=document.querySelectorAll('.trend');
 function re(glob){return new RegExp('^'+glob.split('*').map(function(p){
   return p.replace(/[.+?^${}()|[\\]\\\\]/g,'\\\\$&');}).join('.*')+'$');}
 function apply(){var g=re(cell.value||'*'),m=metric.value,n=0;
  items.forEach(function(el){var ok=g.test(el.dataset.cell)&&(m===''||el.dataset.metric===m);
   el.style.display=ok?'':'none';if(ok)n++;});count.textContent=n+' of '+items.length;}
 cell.addEventListener('input',apply);metric.addEventListener('change',apply);apply();
})();
"""


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "matrix"


def _short(run: RunSummary) -> str:
    """A run on a narrow axis: `12-01 16:15` from the run id (it sorts by start time)."""
    rid = run.run_id
    if re.match(r"^\d{8}-\d{4}", rid):
        return f"{rid[4:6]}-{rid[6:8]} {rid[9:11]}:{rid[11:13]}"
    return rid[:11]


def _chosen(metric: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(metric, p) for p in patterns)


def _report_link(run: RunSummary, out_dir: Path) -> str:
    if run.report is None:
        return '<span class="missing">no report</span>'
    rel = os.path.relpath(run.report.resolve(), out_dir.resolve())
    return k.link(rel, run.report.name)


def _runs_table(runs: Sequence[RunSummary], out_dir: Path) -> str:
    rows, classes = [], []
    for r in reversed(runs):  # newest first
        rows.append([escape(r.run_id), escape(r.started), escape(r.commit), escape(r.backend),
                     f"{escape(r.verdict)}", escape(r.why), k.esc(r.counts.get("passed", 0)),
                     k.esc(r.counts.get("failed", 0)), k.esc(r.counts.get("skipped", 0)),
                     _report_link(r, out_dir)])
        status = {"QUALIFIED": "passed", "NOT QUALIFIED": "failed"}.get(r.verdict, "unknown")
        classes.append(["", "", "", "", status, "", "", "", "", ""])
    head = ["run", "started", "commit", "backend", "verdict", "why", "passed", "failed",
            "skipped", "report"]
    return k.table(head, rows, classes, "runs")


def _changes(points: list[Point], detector: ChangePoints | None) -> list[tuple[int, str]]:
    """(index, description) of every change point of a series."""
    if detector is None or len(points) < 3:
        return []
    values = [p.value for p in points]
    out = []
    for i in detector(values):
        if not 0 < i < len(values):
            continue
        before = sum(values[:i]) / i
        after = sum(values[i:]) / (len(values) - i)
        pct = f"{(after - before) / abs(before) * 100:+.1f}%" if before else "n/a"
        out.append((i, f"{pct} at run {points[i].run_id} (commit {points[i].commit}): "
                       f"{before:.4g} → {after:.4g}"))
    return out


def _matrix_page(matrix: str, runs: Sequence[RunSummary], series: dict[SeriesKey, list[Point]],
                 detector: ChangePoints | None, out_dir: Path) -> str:
    order = {r.run_id: i for i, r in enumerate(runs)}
    labels = {float(i): _short(r) for i, r in enumerate(runs)}
    charts, change_rows, metrics = [], [], sorted({m for _, _, m in series})
    for (_, cell, metric), points in sorted(series.items()):
        changes = _changes(points, detector)
        for _, text in changes:
            change_rows.append([escape(cell), escape(metric), escape(text)])
        chart = svg.line_chart(svg.Chart(
            f"{cell} · {metric}", "run", metric.split(".", 1)[1],
            [svg.Series(cell, [(float(order[p.run_id]), p.value) for p in points
                               if p.run_id in order])],
            x_tick_labels=labels, width=TREND_W, height=TREND_H,
            markers=[(float(order[points[i].run_id]), text) for i, text in changes],
        ))
        charts.append(f'<div class="trend" data-cell="{escape(cell)}" '
                      f'data-metric="{escape(metric)}">'
                      f"{chart}</div>")
    if detector is None:
        cp = k.para("Change points: not computed (no detector installed; the history package "
                    "provides harness.history.change_points, or pass change_points= to "
                    "build_dashboard).", "note")
    elif change_rows:
        shown = " open" if len(change_rows) <= 12 else ""
        cp = (f"<details{shown}><summary>{len(change_rows)} change point(s), marked in the "
              "charts below</summary>"
              + k.table(["cell", "metric", "change"], change_rows, table_id="changes")
              + "</details>")
    else:
        cp = k.para("No change point in these series.")
    options = "".join(f'<option value="{escape(m)}">{escape(m)}</option>' for m in metrics)
    controls = (
        '<div class="controls"><label>cells <input id="cell-glob" value="*" size="40">'
        '</label><label>metric <select id="metric"><option value="">all</option>'
        f'{options}</select></label><span id="shown"></span> charts</div>'
    )
    body = [f"<h1>History: {escape(matrix)}</h1>", '<p><a href="index.html">all matrices</a></p>',
            k.section("Runs", _runs_table(runs, out_dir)),
            k.section("Change points", cp),
            k.section("Trends", controls, "".join(charts) or k.para("No metric to chart."))]
    return k.page(f"History {matrix}", body, FILTER_JS)


def build_dashboard(source: HistorySource, out_dir: Path, cells: str = "*",
                    metrics: Sequence[str] = DEFAULT_METRICS,
                    change_points: ChangePoints | None = None) -> Path:
    """Write index.html and one page a matrix under `out_dir`; returns index.html."""
    runs = source.runs()
    series = {key: pts for key, pts in source.series().items()
              if fnmatch.fnmatchcase(key[1], cells) and _chosen(key[2], metrics)}
    by_matrix: dict[str, list[RunSummary]] = {}
    for r in runs:
        by_matrix.setdefault(r.matrix, []).append(r)
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = []
    for matrix, mruns in sorted(by_matrix.items()):
        page = f"matrix-{_slug(matrix)}.html"
        mseries = {k_: v for k_, v in series.items() if k_[0] == matrix}
        write_atomic(out_dir / page, _matrix_page(matrix, mruns, mseries, change_points,
                                                  out_dir))
        last = mruns[-1]
        sections.append(k.section(
            f"{matrix}: {len(mruns)} run(s), last {last.verdict}",
            f'<p><a href="{k.href(page)}">trends of {len(mseries)} series</a></p>',
            _runs_table(mruns, out_dir)))
    problems = getattr(source, "problems", [])
    body = ["<h1>Qualification history</h1>",
            k.para(f"{len(runs)} run(s) of {len(by_matrix)} matrix(es); cells {cells}; "
                   f"metrics {', '.join(metrics)}"),
            *(k.para(p, "missing") for p in problems),
            *(sections or [k.para("No run found.", "missing")])]
    index = out_dir / "index.html"
    write_atomic(index, k.page("Qualification history", body))
    write_atomic(out_dir / "dashboard.json", json.dumps(
        {"runs": len(runs), "matrices": sorted(by_matrix), "series": len(series)}, indent=2))
    return index
