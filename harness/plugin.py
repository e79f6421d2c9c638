"""pytest hooks and fixtures only: each hands its work to a module of the harness."""

from __future__ import annotations

import gc
from collections.abc import Generator
from typing import Any

import pytest

from harness import backends
from harness.cell import Cell
from harness.cell import Stage
from harness.errors import HarnessError
from harness.matrix import DEVICES
from harness.matrix import load_matrix
from harness.options import RunOptions
from harness.options import add_harness_options
from harness.plan import render_plan
from harness.session import HarnessSession
from harness.session import StageRun
from harness.session import as_pytest_outcomes
from harness.session import cell_of
from harness.session import stage_of
from harness.session import stop_on_sigterm
from harness.stages import Recorder

SESSION_KEY = pytest.StashKey[HarnessSession]()
RECORDER_KEY = pytest.StashKey[Recorder]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("harness", "FP8 serving qualification harness")
    add_harness_options(group.addoption)
    parser.addini("harness_matrix", "Default matrix (name or path)", default="")
    parser.addini("harness_backend", "Default backend (cpu or gaudi)", default="")
    parser.addini("harness_results_dir", "Default results directory", default="")
    parser.addini("harness_cache", "Default artifact cache directory", default="")


def _is_suite_run(config: pytest.Config) -> bool:
    """The harness only builds a session for runs that collect suites (not the project's tests)."""
    if config.getoption("harness_matrix") or config.getoption("harness_plan"):
        return True
    return any("suites" in str(arg).split("::")[0] for arg in config.args)


def pytest_configure(config: pytest.Config) -> None:
    for stage in Stage:
        config.addinivalue_line("markers", f"{stage.value}: the {stage.value} stage of a cell")
    for device in DEVICES:
        config.addinivalue_line("markers", f"{device}: a cell on device {device}")
    if not _is_suite_run(config):
        return
    options = RunOptions.from_config(config)
    worker = getattr(config, "workerinput", None)
    run_id = worker.get("harness_run_id") if worker else None
    try:
        matrix = load_matrix(options.matrix)
        backend = backends.get(
            options.backend or matrix.backend,
            {"workdir": str(options.results_dir), "cache_dir": str(options.cache_dir)},
        )
        session = HarnessSession(options, matrix, backend, run_id, worker is not None)
    except HarnessError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[SESSION_KEY] = session
    stop_on_sigterm()


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """xdist: keep all stages of a cell on one worker, in order (one server per cell)."""
    if _session(config) is None:
        return None
    from harness.xdist_scheduling import CellScheduling

    return CellScheduling(config, log)


def _session(config: pytest.Config) -> HarnessSession | None:
    return config.stash.get(SESSION_KEY, None)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist: every worker appends to the controller's run."""
    session = _session(node.config)
    if session is not None:
        session.open_store()
        node.workerinput["harness_run_id"] = session.store.run_id


def pytest_report_header(config: pytest.Config) -> list[str]:
    session = _session(config)
    if session is None:
        return []
    return [
        f"harness: matrix {session.matrix.name} ({session.matrix.path}), "
        f"{len(session.matrix.cells)} cells, backend {session.backend.name}, "
        f"results {session.store.dir}"
    ]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "cell" not in metafunc.fixturenames:
        return
    session = _session(metafunc.config)
    stage = next(
        (
            Stage(m.name)
            for m in metafunc.definition.iter_markers()
            if m.name in Stage._value2member_map_
        ),
        None,
    )
    if session is None or stage is None:
        raise pytest.UsageError(
            f"{metafunc.definition.nodeid}: a suite test needs a stage marker "
            "(pytestmark = pytest.mark.<stage>) and a matrix (--matrix)"
        )
    params = [session.param_for(c) for c in session.cells_for(stage)]
    # function scope: the session groups items by cell and owns per-cell resources, which
    # spares pytest's session-scope reordering (seconds for a 10,000-cell matrix)
    metafunc.parametrize("cell", params)


@pytest.hookimpl(wrapper=True)
def pytest_collection(session: pytest.Session) -> Generator[None, None, Any]:
    # A 10,000-cell matrix makes 60,000 items that live all run: the cyclic GC re-scanning them
    # as they pile up cost two thirds of collection (benchmarks/bench_collection.py). Collect
    # with it paused, then freeze the survivors out of its way; RSS is unchanged.
    if _session(session.config) is None:
        return (yield)
    gc.disable()
    try:
        return (yield)
    finally:
        gc.freeze()
        gc.enable()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _session(config) is None:
        return
    empty = [i for i in items if stage_of(i) is not None and cell_of(i) is None]
    if empty:
        config.hook.pytest_deselected(items=empty)
    items[:] = sorted((i for i in items if i not in empty), key=HarnessSession.sort_key)


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> bool | None:
    harness = _session(session.config)
    if harness is None or not harness.options.plan:
        return None
    pairs = [(cell_of(i), stage_of(i)) for i in session.items]
    text = render_plan([(c, s) for c, s in pairs if c and s], harness.backend, harness.store.dir)
    session.config.get_terminal_writer().line(text)
    return True


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    harness, cell, stage = _session(item.config), cell_of(item), stage_of(item)
    if harness is None or cell is None or stage is None:
        return
    item.stash[RECORDER_KEY] = Recorder()
    reason = harness.blocked_reason(cell, stage)
    if reason:
        pytest.skip(reason)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, Any]:
    report = yield
    harness, cell, stage = _session(item.config), cell_of(item), stage_of(item)
    if harness is None or cell is None or stage is None:
        return report
    final = report.when == "call" or (report.when == "setup" and not report.passed)
    if final:
        result = harness.record(cell, stage, report, item.stash.get(RECORDER_KEY, None))
        # like record_property: junitxml writes the item's properties with its teardown report
        item.user_properties.append(("cell", cell.id))
        for name, value in result.metrics.items():
            item.user_properties.append((f"{stage.value}.{name}", value))
    return report


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    harness = _session(item.config)
    if harness is not None:
        harness.item_done(item, nextitem)


REGRESSIONS_KEY = pytest.StashKey[list[str]]()


def pytest_sessionfinish(session: pytest.Session) -> None:
    harness = _session(session.config)
    if harness is None or hasattr(session.config, "workerinput"):
        return
    regressions = harness.finish()
    session.config.stash[REGRESSIONS_KEY] = regressions
    if regressions and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    harness = _session(config)
    if harness is None or harness.options.plan:
        return
    summary = harness.store.dir / "summary.md"
    if summary.is_file():
        terminalreporter.section("harness summary")
        terminalreporter.write(summary.read_text(encoding="utf-8"))
        terminalreporter.write_line(f"results: {harness.store.path}")
    regressions = config.stash.get(REGRESSIONS_KEY, [])
    if harness.baseline is not None:
        terminalreporter.section("regressions vs baseline", red=bool(regressions))
        for line in regressions or ["none"]:
            terminalreporter.write_line(line)
        terminalreporter.write_line(f"comparison: {harness.store.dir / 'compare.md'}")


# fixtures ----------------------------------------------------------------


@pytest.fixture(scope="session")
def harness_session(request: pytest.FixtureRequest) -> HarnessSession:
    session = _session(request.config)
    if session is None:
        pytest.skip("no harness session: run the suites with --matrix")
    return session


@pytest.fixture(scope="session")
def backend(harness_session: HarnessSession) -> backends.Backend:
    return harness_session.backend


@pytest.fixture
def stage(request: pytest.FixtureRequest, harness_session: HarnessSession, cell: Cell) -> StageRun:
    """The stage of the requesting suite test, bound to its cell and recorder."""
    which = stage_of(request.node)
    assert which is not None  # guaranteed by pytest_generate_tests
    recorder = request.node.stash.setdefault(RECORDER_KEY, Recorder())
    return StageRun(harness_session.context(cell, which, recorder))


@pytest.fixture
def calibration(harness_session: HarnessSession, cell: Cell) -> Any:
    """The cell's FP8 calibration artifacts (None for BF16): calibrate once, derive many."""
    with as_pytest_outcomes():
        return harness_session.calibration_for(cell)


@pytest.fixture
def server(harness_session: HarnessSession, cell: Cell) -> Any:
    """The cell's server: started once, shared by its serving, accuracy and throughput stages,
    stopped after the cell's last stage (the session keeps it; items run grouped by cell)."""
    with as_pytest_outcomes():
        return harness_session.server_for(cell)
