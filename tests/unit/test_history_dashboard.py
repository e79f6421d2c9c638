"""The history database as the dashboard's source: the same page as the run directories."""

from __future__ import annotations

import math
from pathlib import Path

from test_history import FP8  # beside this file: pytest's rootdir-relative import
from test_history import write_run

from harness.cli import main
from harness.history import History
from harness.history import dashboard_source
from harness.history import import_runs
from harness.report.dashboard import build_dashboard
from harness.report.dashboard_source import RunDirSource
from harness.report.dashboard_source import default_change_points
from harness.report.dashboard_source import open_source

REAL_RUN = Path(__file__).resolve().parent.parent / "data" / "history" / "20261204-033232-395-7a00"


def _reports(tmp_path: Path) -> Path:
    reports = tmp_path / "reports"
    for day in range(1, 10):
        write_run(reports, f"202612{day:02d}-010000-000-aaaa",
                  throughput=100.0 if day < 6 else 90.0, commit=f"c{day}")
    history = History.open(str(reports / "history.sqlite"))
    import_runs(history, sorted(reports.iterdir()))
    history.close()
    return reports


def test_the_database_gives_the_runs_and_series_the_run_directories_give(tmp_path: Path):
    reports = _reports(tmp_path)
    db, dirs = dashboard_source(str(reports / "history.sqlite")), RunDirSource(reports)
    assert db.runs() == dirs.runs()
    finite = {k: v for k, v in dirs.series().items() if all(math.isfinite(p.value) for p in v)}
    assert db.series() == finite  # the database keeps finite numbers only (no NaN points)
    db.history.close()


def test_a_recorded_real_run_reads_the_same_from_the_database(tmp_path: Path):
    history = History.open(str(tmp_path / "h.sqlite"))
    import_runs(history, [REAL_RUN])
    history.close()
    db = dashboard_source(str(tmp_path / "h.sqlite"))
    (run,) = db.runs()
    assert (run.run_id, run.matrix, run.counts["passed"]) == (REAL_RUN.name, "smoke-cpu", 17)
    key = ("smoke-cpu", "tiny-llama/cpu/tp1/fp8-kv-fp8", "accuracy.exact_match_strict")
    assert [p.value for p in db.series()[key]] == [0.79]
    db.history.close()


def test_the_dashboard_marks_change_points_found_by_the_history_detector(tmp_path: Path):
    reports = _reports(tmp_path)
    detector = default_change_points()
    assert detector is not None and detector([1.0] * 4 + [2.0] * 4) == [4]
    source = open_source(str(reports / "history.sqlite"), reports)
    build_dashboard(source, tmp_path / "site", cells=FP8,
                    metrics=("throughput.output_throughput@c1",), change_points=detector)
    page = (tmp_path / "site" / "matrix-smoke-cpu.html").read_text()
    assert "-10.0% at run 20261206-010000-000-aaaa (commit c6)" in page


def test_dashboard_cli_reads_the_database(tmp_path: Path, capsys):
    reports = _reports(tmp_path)
    site = tmp_path / "site"
    args = ["dashboard", "--results-dir", str(reports), "-o", str(site),
            "--db", str(reports / "history.sqlite")]
    assert main(args) == 0
    assert capsys.readouterr().out.strip() == str(site / "index.html")
    assert "9 run(s) of 1 matrix(es)" in (site / "index.html").read_text()
