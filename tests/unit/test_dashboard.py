"""The history dashboard: runs by matrix with verdicts, trend charts per cell and metric,
filters, change points through a pluggable detector, and a source interface for the DB."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from harness.cli import main
from harness.errors import HarnessError
from harness.report import synthetic
from harness.report.dashboard import build_dashboard
from harness.report.dashboard_source import Point
from harness.report.dashboard_source import RunDirSource
from harness.report.dashboard_source import RunSummary
from harness.report.dashboard_source import open_source


def _history(tmp_path: Path) -> Path:
    root = tmp_path / "reports"
    synthetic.write_history(root, 6, 4, step_at=3)
    synthetic.write_run(root, "20261202-000000-000-0000", synthetic.cell_ids(4),
                        fail_serving=synthetic.cell_ids(4)[1])
    return root


def step_detector(values):
    """A stand-in detector for the test: the split with the largest mean shift, over 5%."""
    def shift(i):
        return abs(sum(values[i:]) / (len(values) - i) - sum(values[:i]) / i)
    best = max(range(1, len(values)), key=shift)
    return [best] if shift(best) > 0.05 * abs(sum(values) / len(values)) else []


def test_runs_by_matrix_with_their_verdicts_newest_first(tmp_path):
    root = _history(tmp_path)
    index = build_dashboard(RunDirSource(root), tmp_path / "site")
    page = index.read_text()
    assert "7 run(s) of 1 matrix(es)" in page
    assert "synthetic: 7 run(s), last NOT QUALIFIED" in page
    runs = re.findall(r"<tr><td>(\d{8}-[\d-]+)</td>", page)
    assert runs == sorted(runs, reverse=True) and len(runs) == 7
    assert 'href="../reports/20261202-000000-000-0000/report.md"' not in page  # no report yet
    assert page.count('<span class="missing">no report</span>') == 7


def test_a_trend_chart_per_cell_and_metric_and_filters_in_the_page(tmp_path):
    root = _history(tmp_path)
    build_dashboard(RunDirSource(root), tmp_path / "site", cells="*/tp1/*",
                    metrics=("throughput.output_throughput@*", "accuracy.exact_match_strict"))
    page = (tmp_path / "site" / "matrix-synthetic.html").read_text()
    trends = re.findall(r'<div class="trend" data-cell="([^"]+)" data-metric="([^"]+)">', page)
    assert {c for c, _ in trends} == {"model-0/cpu/tp1/bf16-kv-auto", "model-0/cpu/tp1/fp8-kv-fp8"}
    assert {m for _, m in trends} == {"accuracy.exact_match_strict",
                                      "throughput.output_throughput@c1",
                                      "throughput.output_throughput@c4",
                                      "throughput.output_throughput@c32"}
    assert 'id="cell-glob"' in page and '<option value="accuracy.exact_match_strict">' in page
    assert "Change points: not computed" in page
    summary = json.loads((tmp_path / "site" / "dashboard.json").read_text())
    assert summary == {"runs": 7, "matrices": ["synthetic"], "series": len(trends)}


def test_change_points_are_marked_when_a_detector_is_given(tmp_path):
    root = _history(tmp_path)
    build_dashboard(RunDirSource(root), tmp_path / "site", cells="*/tp1/bf16-*",
                    metrics=("throughput.output_throughput@c1",), change_points=step_detector)
    page = (tmp_path / "site" / "matrix-synthetic.html").read_text()
    assert re.search(r"-\d+\.\d% at run 20261101-031500-000-0000 \(commit c0003\)", page)
    assert '<line x1="' in page and 'class="marker"><title>' in page


def test_an_unreadable_run_is_listed_as_such(tmp_path):
    root = _history(tmp_path)
    bad = root / "20261203-000000-000-0000"
    bad.mkdir()
    (bad / "results.jsonl").write_text('{"kind": "stage", "cell": "c", "stage": "s", '
                                       '"status": "passed", "bogus_field_only": 1}\n'
                                       '{"kind": "stage"}\n')
    page = build_dashboard(RunDirSource(root), tmp_path / "site").read_text()
    assert "20261203-000000-000-0000: unreadable results.jsonl" in page


class MemorySource:
    """What a history database adapter provides: the same two methods."""

    def runs(self):
        return [RunSummary("r1", "nightly-g2", "gaudi", "c1", "", "QUALIFIED", "all", {}, None),
                RunSummary("r2", "nightly-g2", "gaudi", "c2", "", "QUALIFIED", "all", {}, None)]

    def series(self):
        return {("nightly-g2", "llama/g2/tp1/bf16-kv-auto", "accuracy.exact_match_strict"):
                [Point("r1", "c1", 0.8), Point("r2", "c2", 0.81)]}


def test_any_history_source_plugs_in(tmp_path):
    build_dashboard(MemorySource(), tmp_path / "site")
    page = (tmp_path / "site" / "matrix-nightly-g2.html").read_text()
    assert 'data-cell="llama/g2/tp1/bf16-kv-auto"' in page


def test_db_without_a_reader_says_what_to_do(tmp_path):
    with pytest.raises(HarnessError, match="omit --db to read the run directories"):
        open_source("sqlite:///x.sqlite", tmp_path)


def test_cli_writes_the_site(tmp_path, capsys):
    root = _history(tmp_path)
    assert main(["dashboard", "--results-dir", str(root), "-o", str(tmp_path / "site"),
                 "--cells", "*/tp2/*"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "site" / "index.html")
    assert 'data-cell="model-0/cpu/tp2/fp8-kv-fp8"' in (
        tmp_path / "site" / "matrix-synthetic.html").read_text()
