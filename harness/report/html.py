"""report.html: the qualification report as one self-contained page, beside report.md.

It says the verdict and what it rests on, then lets a reader drill down: the cells x stages
grid links to each stage's details (artifacts, log), failures show their hint and log tail
inline, and the figures are drawn (inline SVG, no network at view time). It reads the same
`Run` as report.md, so the two never disagree on the verdict.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from pathlib import Path

from harness.cell import STAGE_NAMES
from harness.fileio import write_atomic
from harness.report import facts
from harness.report import html_figures as figs
from harness.report import htmlkit as k
from harness.report.markdown import KEY_METRICS
from harness.report.markdown import STATUS_MARK
from harness.report.qualification import Run
from harness.report.qualification import context_rows
from harness.report.qualification import verdict
from harness.results import StageResult
from harness.results import read_records
from harness.workplan.figures import units_table

REPORT_HTML = "report.html"
ATTENTION = {"failed": 0, "unknown": 1}  # gates listed first; the rest keep their order


def _anchor(cell: str, stage: str) -> str:
    return "s-" + "".join(ch if ch.isalnum() else "-" for ch in f"{cell}-{stage}")


def _grid(run: Run, run_dir: Path) -> str:
    by_cell: dict[str, dict[str, StageResult]] = {}
    for result in run.results:
        by_cell.setdefault(result.cell, {})[result.stage] = result
    stages = [s for s in STAGE_NAMES if any(s in row for row in by_cell.values())]
    rows, classes = [], []
    for cell, row in by_cell.items():
        cols, cls = [escape(cell)], [""]
        for stage in stages:
            r = row.get(stage)
            if r is None:
                cols.append("n/a")
                cls.append("absent")
                continue
            key = [f"{m}={k.fmt(r.metrics[m])}" for m in KEY_METRICS.get(stage, ())
                   if m in r.metrics][:2]
            log = facts.log_tail(run_dir, r, 0) if r.status != "passed" else None
            logs = [a for a in facts.artifacts(run_dir, r) if "log" in a.name] or []
            link_to = log[0] if log else (logs[0].path if logs else "")
            target = ("f-" if r.status == "failed" else "") + _anchor(cell, stage)
            cols.append(
                f'<a class="status" href="#{target}">'
                f"{escape(STATUS_MARK.get(r.status, r.status))}</a>"
                + "".join(f'<span class="fig">{escape(x)}</span>' for x in key)
                + (f" {k.link(link_to, 'log')}" if link_to else "")
            )
            cls.append(r.status)
        rows.append(cols)
        classes.append(cls)
    if not rows:
        return k.para("No stage was recorded in this run.", "missing")
    return k.table(["cell", *stages], rows, classes, "grid")


def _gates(run: Run) -> tuple[str, dict[str, int]]:
    rows, classes = [], []
    counts: dict[str, int] = {}
    gates = [(r, g) for r in run.results for g in r.gates]
    gates.sort(key=lambda rg: ATTENTION.get(facts.gate_status(rg[1], rg[0].cell), 9))
    for r, g in gates:
        status = facts.gate_status(g, r.cell)
        counts[status] = counts.get(status, 0) + 1
        message = escape(str(g.get("message", "")))
        rows.append([escape(r.cell), k.esc(g.get("metric", "?")), k.esc(g.get("value")),
                     k.esc(g.get("bound", "")), escape(facts.gate_interval(g)),
                     f'<span title="{message}">{escape(status)}</span>',
                     escape(facts.gate_extras(g)) + ("" if status == "passed" else
                                                    f" {message}")])
        classes.append(["", "", "", "", "", status.replace("/", ""), ""])
    if not rows:
        return k.para("No gate was evaluated in this run."), counts
    head = ["cell", "metric", "value", "bound", "interval", "status", "more"]
    return k.table(head, rows, classes, "gates"), counts


def _unknown_warning(counts: dict[str, int]) -> str:
    """An unknown gate was not evaluated: the page says so beside the verdict, whatever it is."""
    n = counts.get("unknown", 0)
    if not n:
        return ""
    return (f'<div class="missing">but {n} gate(s) could not be evaluated (unknown: a missing '
            'reference, see <a href="#gates">Gates</a>); an unknown gate is never a pass</div>')


def _rests_on(run: Run, gate_counts: dict[str, int]) -> str:
    stages = {s: sum(1 for r in run.results if r.status == s) for s in STATUS_MARK}
    cells = len({r.cell for r in run.results})
    parts = [f"{cells} cell(s), {len(run.results)} stage(s): {stages['passed']} passed, "
             f"{stages['failed']} failed, {stages['skipped']} skipped",
             "gates: " + (", ".join(f"{n} {s}" for s, n in sorted(gate_counts.items()))
                          or "none evaluated")]
    items = "".join(f"<li>{escape(p)}</li>" for p in parts)
    if gate_counts.get("unknown"):
        items += ("<li class=\"missing\">an unknown gate is never a pass: its reference "
                  "(e.g. the BF16 twin) was missing</li>")
    if run.context.get("backend") == "cpu":
        items += ("<li>cpu backend: the pipeline in miniature; it rehearses the procedure and "
                  "does not qualify Gaudi hardware or a production model</li>")
    for r in run.results:
        if r.stage == "serving" and r.metrics.get("emulated", "none") != "none":
            items += (f"<li>{escape(r.cell)}: emulated {k.esc(r.metrics.get('emulated'))} "
                      f"(KV cache {k.esc(r.metrics.get('kv_cache', '?'))}, weights "
                      f"{k.esc(r.metrics.get('weights', '?'))})</li>")
    return f"<ul>{items}</ul>"


def _failures(run: Run, run_dir: Path) -> str:
    out = []
    for r in run.results:
        if r.status != "failed":
            continue
        hint = facts.hint_of(r)
        tail = facts.log_tail(run_dir, r)
        out.append(
            f'<div class="failure" id="f-{_anchor(r.cell, r.stage)}"><h3>{escape(r.cell)} '
            f"[{escape(r.stage)}]</h3>"
            f"<pre>{escape(facts.reason_of(r) or '(no message)')}</pre>"
            + (f'<p class="hint">fix: {escape(hint)}</p>' if hint else "")
            + (f"<p>last lines of {k.link(tail[0], tail[0])}:</p>"
               f'<pre class="log">{escape(tail[1])}</pre>'
               if tail else '<p class="missing">no log of this stage was found</p>')
            + "</div>"
        )
    skipped = [r for r in run.results if r.status == "skipped"]
    if skipped:
        rows = [[escape(r.cell), escape(r.stage), escape(r.message)] for r in skipped]
        out.append("<h3>Skipped</h3>" + k.table(["cell", "stage", "reason"], rows))
    return "".join(out) or k.para("Nothing failed or was skipped.")


def _details(run: Run, run_dir: Path) -> str:
    """Per stage: every artifact (missing ones marked) and every metric, folded."""
    out = []
    for r in run.results:
        links = []
        for a in facts.artifacts(run_dir, r):
            links.append(f"<li>{k.link(a.path, a.name)}"
                         + ("" if a.exists else ' <span class="missing">missing</span>')
                         + "</li>")
        metrics = [[escape(n), k.esc(v)] for n, v in sorted(r.metrics.items())]
        out.append(
            f'<details id="{_anchor(r.cell, r.stage)}"{" open" if r.status == "failed" else ""}>'
            f'<summary><span class="{r.status}">'
            f"{escape(STATUS_MARK.get(r.status, r.status))}</span> {escape(r.cell)} "
            f"[{escape(r.stage)}] {r.duration_s:.1f} s</summary>"
            + (f"<ul>{''.join(links)}</ul>" if links else "<p>no artifacts</p>")
            + (k.table(["metric", "value"], metrics) if metrics else "")
            + "</details>"
        )
    return "".join(out)


def _siblings(run_dir: Path) -> str:
    """Links to the run's other records beside this page (those that exist)."""
    names = [n for n in ("report.md", "summary.md", "results.jsonl", "compare.md", "trend.png")
             if (run_dir / n).is_file()]
    return f"<p>files: {' · '.join(k.link(n, n) for n in names)}</p>" if names else ""


def _units(run_dir: Path) -> str:
    """A `pytest -n` run's work units: makespan, utilisation, one row a unit ("" without)."""
    path = run_dir / "results.jsonl"
    table = units_table(read_records(path)) if path.is_file() else None
    if table is None:
        return ""
    rows = [[escape(c) for c in row] for row in table.rows]
    clash = k.para("Cards held by two units at once: " + "; ".join(table.clashes), "missing")
    body = k.para(table.headline) + k.table(list(table.header), rows)
    return k.section("Work units", body + (clash if table.clashes else ""), ident="units")


def _context(run: Run) -> str:
    return k.table(["", "value"], [[escape(a), escape(str(b))] for a, b in context_rows(run)])


def render_html(run: Run, history: Sequence[Run] = (), run_dir: Path | None = None) -> str:
    """The whole page; `run_dir` is where artifacts are looked up (links are relative to it)."""
    run_dir = run_dir if run_dir is not None else Path(".")
    results, problems = facts.sanitize(run.results)
    run = Run(run.run_id, run.context if isinstance(run.context, dict) else {}, results)
    word, why = verdict(run)
    gates, counts = _gates(run)
    name = str(run.context.get("matrix_name", "?"))
    nav = " · ".join(f'<a href="#{i}">{t}</a>' for i, t in (
        ("cells", "cells"), ("gates", "gates"), ("fp8", "FP8 vs BF16"),
        ("throughput", "throughput"), ("collectives", "collectives"),
        ("calibration", "calibration"), ("failures", "failures"), ("run", "run"),
        ("details", "details")))
    body = [
        f"<h1>Qualification report: {escape(name)} <small>run {escape(run.run_id)}</small></h1>",
        f'<div class="verdict v-{word.replace(" ", "-")}" id="verdict">Verdict: {escape(word)}'
        f" <small>— {escape(why)}</small>{_unknown_warning(counts)}</div>",
        "<h3>What it rests on</h3>" + _rests_on(run, counts),
        *(k.para(f"results.jsonl: {p}", "missing") for p in problems),
        f"<nav>{nav}</nav>",
        _siblings(run_dir),
        k.section("Cells × stages", _grid(run, run_dir), ident="cells"),
        k.section("Gates", gates, ident="gates-section"),
        k.section("FP8 beside BF16", figs.fp8_vs_bf16(run), ident="fp8"),
        k.section("Throughput and latency", figs.throughput(run, run_dir), ident="throughput"),
        k.section("Collective bandwidth", figs.collectives(run, run_dir), ident="collectives"),
        k.section("Calibration", figs.calibration(run, run_dir), ident="calibration"),
        k.section("Failures and skips", _failures(run, run_dir), ident="failures"),
        k.section("Trend", figs.trend(run, list(history)), ident="trend") if history else "",
        _units(run_dir),
        k.section("Run context and stack", _context(run), ident="run"),
        k.section("Stage details", _details(run, run_dir), ident="details"),
    ]
    return k.page(f"{word}: {name} {run.run_id}", body)


def write_html(run: Run, history: Sequence[Run], directory: Path) -> Path:
    """report.html in the run's directory, written atomically."""
    path = directory / REPORT_HTML
    write_atomic(path, render_html(run, history, directory))
    return path
