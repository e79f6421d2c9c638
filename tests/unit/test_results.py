"""Run store: records appended whole, torn lines tolerated, runs never overwritten."""

from __future__ import annotations

import json

import pytest

from harness.results import ResultStore
from harness.results import RunStore
from harness.results import StageResult
from harness.results import read_records
from harness.results import write_atomic


def test_each_append_is_one_complete_json_line_on_disk(tmp_path):
    store = RunStore(tmp_path, "r1")
    store.open({"matrix_name": "m"})
    store.append(
        StageResult(
            cell="a/cpu/tp1/bf16-kv-auto", stage="preflight", status="passed", metrics={"x": 1}
        )
    )
    lines = store.path.read_text().splitlines()
    assert len(lines) == 2
    rec = json.loads(lines[1])
    assert rec["run_id"] == "r1" and rec["metrics"] == {"x": 1} and rec["schema_version"] == 1


def test_a_run_directory_is_never_reused(tmp_path):
    RunStore(tmp_path, "r1").open({})
    with pytest.raises(FileExistsError):
        RunStore(tmp_path, "r1").open({})


def test_a_torn_last_line_from_a_killed_run_is_ignored(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text(
        '{"kind": "run"}\n{"kind": "stage", "cell": "a", "stage": "x", "status": "passed"}\n{"kind": "st'
    )
    assert [r["kind"] for r in read_records(path)] == ["run", "stage"]


def test_store_lists_and_loads_runs_in_order(tmp_path):
    for run_id in ("20260101-000000-aaaa", "20260102-000000-bbbb"):
        store = RunStore(tmp_path, run_id)
        store.open({})
        store.append(StageResult(cell="c", stage="accuracy", status="failed", message="low"))
    results = ResultStore(tmp_path)
    assert results.runs() == ["20260101-000000-aaaa", "20260102-000000-bbbb"]
    assert results.latest() == "20260102-000000-bbbb"
    (only,) = results.load("20260102-000000-bbbb")
    assert only.status == "failed" and only.message == "low"


def test_write_atomic_replaces_whole_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "summary.md"
    write_atomic(target, "old")
    write_atomic(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.md"]


def test_cell_dir_flattens_the_cell_id(tmp_path):
    store = RunStore(tmp_path, "r")
    path = store.cell_dir("m/cpu/tp1/fp8-kv-fp8", "serving")
    assert path == tmp_path / "r" / "cells" / "m__cpu__tp1__fp8-kv-fp8" / "serving"
    assert path.is_dir()


def test_run_ids_sort_by_start_time_even_within_one_second():
    import datetime as dt

    from harness.results import new_run_id

    t0 = dt.datetime(2026, 11, 23, 16, 15, 0, 1000)
    ids = [new_run_id(t0 + dt.timedelta(milliseconds=i)) for i in range(50)]
    assert sorted(ids) == ids


def test_the_run_commit_says_when_the_code_differs_from_it(tmp_path):
    import subprocess

    from harness.session import _git_commit

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    clean = _git_commit(tmp_path)
    assert len(clean) == 7 and not clean.endswith("-dirty")
    (tmp_path / "a.py").write_text("x = 2\n")
    assert _git_commit(tmp_path) == clean + "-dirty"
    assert _git_commit(tmp_path / "no-such-dir") == ""
