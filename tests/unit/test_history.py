"""History database on SQLite: schema and migrations, idempotent import, best-effort writes."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa

from harness.history import History
from harness.history import HistoryError
from harness.history import HistoryWriter
from harness.history import RunContext
from harness.history import import_runs
from harness.history import parse_url
from harness.history import schema
from harness.history.migrate import current_version
from harness.history.migrate import migrate
from harness.history.url import create_engine
from harness.results import RunStore
from harness.results import StageResult

FP8 = "tiny/cpu/tp1/fp8-kv-fp8"
BF16 = "tiny/cpu/tp1/bf16-kv-auto"
VERSIONS = {"vllm": "0.32.0", "lm_eval": "0.4.13"}


def write_run(
    root: Path,
    run_id: str,
    *,
    throughput: float = 100.0,
    accuracy: float = 0.85,
    versions: dict[str, str] | None = None,
    host_class: str = "cpu/cpu/x86_64/test/2c",
    backend: str = "cpu",
    device: str = "cpu",
    commit: str = "abc1234",
    status: str = "passed",
) -> Path:
    """A run directory written by the real RunStore, as a session writes it."""
    store = RunStore(root, run_id)
    store.open(
        {
            "matrix": "matrices/smoke-cpu.yaml",
            "matrix_name": "smoke-cpu",
            "matrix_sha256": "f" * 64,
            "backend": backend,
            "commit": commit,
            "host": "box",
            "inventory": "2 cores",
            "versions": versions or VERSIONS,
            "started": f"2026-12-{run_id[6:8]}T{run_id[9:11]}:00:00+00:00",
            "host_fingerprint": {"host_class": host_class, "device": device},
        }
    )
    for cell in (BF16, FP8):
        store.append(
            StageResult(
                cell, "accuracy", status, metrics={"exact_match_strict": accuracy, "samples": 200},
                artifacts={"lm_eval_output": f"cells/{cell.replace('/', '__')}/accuracy/out"},
                device=device, backend=backend,
            )
        )
        store.append(
            StageResult(
                cell, "throughput", status,
                metrics={"output_throughput@c1": throughput, "model": "tiny", "bad": float("nan")},
                gates=[{"metric": "x", "value": float("nan"), "passed": False}],
                device=device, backend=backend,
            )
        )
    return store.dir


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "reports" / "history.sqlite")


@pytest.fixture
def history(db: str):
    h = History.open(db)
    yield h
    h.close()


def test_open_creates_the_current_schema_and_records_its_version(history: History):
    inspector = sa.inspect(history.engine)
    for table in schema.metadata.sorted_tables:
        found = {c["name"] for c in inspector.get_columns(table.name)}
        assert found == {c.name for c in table.columns}, table.name
    with history.engine.connect() as conn:
        assert current_version(conn) == schema.SCHEMA_VERSION


def test_a_version_1_database_is_migrated_and_its_runs_backfilled(db: str):
    engine = create_engine(parse_url(db))
    assert migrate(engine, target=1) == 1
    context = {"run_id": "r1", "backend": "cpu", "versions": VERSIONS,
               "host_fingerprint": {"host_class": "hc", "device": "cpu"}}
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO runs (run_id, context) VALUES ('r1', :c)"),
                     {"c": json.dumps(context)})
        conn.execute(sa.text(
            "INSERT INTO results (run_id, cell, stage, status, metrics, gates, artifacts) "
            "VALUES ('r1', 'c', 'throughput', 'passed', '{}', '[]', '{}')"
        ))
        conn.execute(sa.text(
            "INSERT INTO metrics (result_id, name, run_id, cell, stage, value) "
            "VALUES (1, 'x', 'r1', 'c', 'throughput', 1.0)"
        ))
    engine.dispose()
    history = History.open(db)
    with history.engine.connect() as conn:
        row = conn.execute(sa.text("SELECT host_class, device, stack_key FROM runs")).one()
        n_metrics = conn.execute(sa.text("SELECT n_metrics FROM results")).scalar()
    assert row == ("hc", "cpu", RunContext.from_record(context).stack_key)
    assert n_metrics == 1
    history.close()


def test_a_database_from_a_newer_harness_is_refused(db: str, history: History):
    with history.engine.begin() as conn:
        conn.execute(schema.schema_version.insert().values(version=99, applied="later"))
    with pytest.raises(HistoryError, match="version 99 is newer than this harness"):
        History.open(db)


def test_the_same_run_imported_twice_is_stored_once(tmp_path: Path, history: History):
    run = write_run(tmp_path / "reports", "20261201-010000-000-aaaa")
    first = import_runs(history, [run])
    second = import_runs(history, [run, run / "results.jsonl"])
    assert (first.runs_new, first.results_new) == (1, 4)
    assert (second.runs_new, second.runs_seen, second.results_new) == (0, 2, 0)
    assert (history.count("runs"), history.count("results")) == (1, 4)
    assert history.count("metrics") == 2 * 2 + 2  # accuracy: 2 numbers, throughput: 1 (NaN out)


def test_import_fills_in_only_what_a_down_database_missed(tmp_path: Path, history: History):
    run = write_run(tmp_path / "reports", "20261201-010000-000-aaaa")
    lines = (run / "results.jsonl").read_text().splitlines()
    history.record_run(json.loads(lines[0]), run)
    history.record_result("20261201-010000-000-aaaa", StageResult(**{
        k: v for k, v in json.loads(lines[1]).items() if k in StageResult.__dataclass_fields__
    }))
    summary = import_runs(history, [run])
    assert (summary.runs_seen, summary.results_seen, summary.results_new) == (1, 1, 3)


def test_a_torn_last_line_is_left_out(tmp_path: Path, history: History):
    run = write_run(tmp_path / "reports", "20261201-010000-000-aaaa")
    with (run / "results.jsonl").open("a") as fh:
        fh.write('{"kind": "stage", "cell": "tiny/cp')
    summary = import_runs(history, [run])
    assert summary.results_new == 4 and not summary.problems


def test_a_corrupt_line_refuses_the_file_and_names_the_line(tmp_path: Path, history: History):
    run = write_run(tmp_path / "reports", "20261201-010000-000-aaaa")
    path = run / "results.jsonl"
    lines = path.read_text().splitlines()
    lines.insert(2, "{garbage")
    path.write_text("\n".join(lines) + "\n")
    summary = import_runs(history, [run])
    assert summary.runs_new == 0
    assert len(summary.problems) == 1
    assert "results.jsonl:3: not JSON" in summary.problems[0]
    assert "fix or delete that line" in summary.problems[0]


def test_a_file_that_is_not_a_run_is_refused_with_what_was_expected(tmp_path, history):
    path = tmp_path / "results.jsonl"
    path.write_text('{"kind": "stage"}\n')
    (problem,) = import_runs(history, [path]).problems
    assert "first line is not a run context" in problem


def test_import_of_reports_star_skips_what_is_not_a_run(tmp_path: Path, history: History):
    reports = tmp_path / "reports"
    write_run(reports, "20261201-010000-000-aaaa")
    (reports / "README.md").write_text("runs\n")
    summary = import_runs(history, sorted(reports.iterdir()))
    assert summary.runs_new == 1
    assert "README.md" in summary.skipped and "history.sqlite" in summary.skipped
    missing = import_runs(history, [reports / "nope"])
    assert missing.problems == [f"{reports / 'nope'}: no such file or directory"]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://u@h/db", "unsupported database 'mysql'"),
        ("sqlite://", "must be a file"),
        ("", "empty history database URL"),
        ("postgresql://u@h", "no database name"),
        ("::not a url::/x://", "not a database URL"),
    ],
    ids=["other-database", "sqlite-memory", "empty", "pg-without-db", "garbage"],
)
def test_bad_urls_get_one_clear_message(url: str, message: str):
    with pytest.raises(HistoryError, match=message):
        parse_url(url)


def test_a_password_is_never_shown():
    with pytest.raises(HistoryError) as info:
        History.open("postgresql://ci:s3cret@127.0.0.1:1/harness", timeout_s=2)
    assert "s3cret" not in str(info.value) and "***" in str(info.value)
    assert "cannot open" in str(info.value)


def test_a_locked_database_costs_a_warning_not_a_result(tmp_path: Path, db: str):
    History.open(db).close()
    locker = sqlite3.connect(db, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    warnings: list[str] = []
    writer = HistoryWriter(db, warn=warnings.append, timeout_s=0.2)
    run = write_run(tmp_path / "reports", "20261201-010000-000-aaaa")
    context = json.loads((run / "results.jsonl").read_text().splitlines()[0])
    assert not writer.record_run(context, run)
    assert not writer.record_result(context["run_id"], StageResult(FP8, "serving", "passed"))
    summary = writer.close(run)
    locker.rollback()
    locker.close()
    assert len(warnings) == 1 and "locked" in warnings[0]
    assert summary is not None and f"harness history import {run}" in summary
    history = History.open(db)
    assert import_runs(history, [run]).results_new == 4  # results.jsonl had everything
    history.close()


def test_the_writer_stops_trying_after_repeated_failures(tmp_path: Path):
    target = tmp_path / "a-directory"
    target.mkdir()
    warnings: list[str] = []
    writer = HistoryWriter(str(target), warn=warnings.append)
    writer.record_run({"run_id": "r1"})
    for _ in range(5):
        assert not writer.record_result("r1", StageResult(FP8, "serving", "passed"))
    assert len(warnings) == 1 and writer.failed == 6
    assert writer.reader() is None  # gates then record `unknown`


def test_the_writer_records_a_run_as_it_goes(tmp_path: Path, db: str):
    writer = HistoryWriter(db)
    run = write_run(tmp_path / "reports", "20261201-010000-000-aaaa")
    context = json.loads((run / "results.jsonl").read_text().splitlines()[0])
    assert writer.record_run(context, run)
    assert writer.record_result(context["run_id"], StageResult(FP8, "serving", "passed"))
    reader = writer.reader()
    assert reader is not None and reader.run_ids() == [context["run_id"]]
    assert writer.close(run) is None
    history = History.open(db)
    assert history.run_ids() == [context["run_id"]]
    history.close()
