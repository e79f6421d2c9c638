"""pytest hooks and fixtures only: options, markers, and the run's session (harness/session.py).

For a suite run `pytest_configure` builds the `HarnessSession` and registers it as a plugin, so
the run's hooks live on that object; outside a suite run (the project's own tests) nothing of
the harness is active. The fixtures hand a stage exactly what it uses: `stage` (its context),
`calibration` and `server` (its cell's resources, see harness/cell_resources.py).
"""

from __future__ import annotations

import os
import sys

import pytest

from harness import backends
from harness import process_registry
from harness.calibration.artifacts import CalibrationArtifacts
from harness.cell import Cell
from harness.cell import Stage
from harness.devices import DEVICES
from harness.errors import HarnessError
from harness.history.options import HISTORY_INI
from harness.history.options import add_history_option
from harness.matrix import load_matrix
from harness.options import RunOptions
from harness.options import add_harness_options
from harness.options import check_selection
from harness.progress import ProgressPlugin
from harness.session import PLUGIN_NAME
from harness.session import RECORDER_KEY
from harness.session import HarnessSession
from harness.session import stage_of
from harness.session import stop_on_sigterm
from harness.stages.base import Recorder
from harness.stages.runner import StageRun
from harness.stages.runner import as_pytest_outcomes
from harness.stages.serving import ServerHandle
from harness.workplan import run as workplan_run


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("harness", "FP8 serving qualification harness")
    add_harness_options(group.addoption)
    add_history_option(group.addoption)
    group.addoption(
        "--ray-address",
        dest="harness_ray_address",
        default=None,
        metavar="HOST:PORT",
        help="Join this Ray cluster (with -n N: cells run at once on its nodes and cards, "
        "leased through Ray); default: RAY_ADDRESS, else the cpu backend starts a local one",
    )
    name, text, _, default = HISTORY_INI  # a string option
    parser.addini(name, text, type="string", default=default)
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
        check_selection(matrix, options.cells, options.stages)
        backend = backends.get(
            options.backend or matrix.backend,
            {"workdir": str(options.results_dir), "cache_dir": str(options.cache_dir)},
        )
        session = HarnessSession(options, matrix, backend, run_id, worker is not None)
        address = config.getoption("harness_ray_address", None)
        if address:  # for this process's Ray connection and the workers xdist starts
            os.environ["RAY_ADDRESS"] = address
        if workplan_run.distributed(config) and not options.plan:
            session.plan_units()  # before xdist starts the workers, which join its cluster
        elif worker is not None and worker.get("harness_cluster"):
            session.join_units(worker["harness_cluster"])
    except HarnessError as exc:
        raise pytest.UsageError(str(exc)) from None
    if worker is None and not options.plan:  # what a crashed (SIGKILLed) run left behind
        for left in process_registry.reap_leftovers():
            print(f"harness: stopped a crashed run's leftover: {left.describe()}", file=sys.stderr)
    process_registry.activate(run_id=session.store.run_id)
    config.pluginmanager.register(session, PLUGIN_NAME)
    # a `pytest -n` run: workers write their progress lines where the controller follows them
    units = session.plan is not None or (worker is not None and "harness_cluster" in worker)
    shared = session.store.dir / "progress" if units else None
    config.pluginmanager.register(ProgressPlugin(config, shared), "harness-progress")
    stop_on_sigterm()
    session.signals.install()  # after stop_on_sigterm: it notes the signal, then that acts


# fixtures ----------------------------------------------------------------


@pytest.fixture(scope="session")
def harness_session(request: pytest.FixtureRequest) -> HarnessSession:
    session = request.config.pluginmanager.get_plugin(PLUGIN_NAME)
    if not isinstance(session, HarnessSession):
        pytest.skip("no harness session: run the suites with --matrix")
    return session


@pytest.fixture(scope="session")
def backend(harness_session: HarnessSession) -> backends.Backend:
    return harness_session.backend


@pytest.fixture
def stage(request: pytest.FixtureRequest, harness_session: HarnessSession, cell: Cell) -> StageRun:
    """The stage of the requesting suite test, bound to its cell's context and recorder."""
    which = stage_of(request.node)
    if which is None:
        raise pytest.UsageError(f"{request.node.nodeid}: no stage marker")
    recorder = request.node.stash.setdefault(RECORDER_KEY, Recorder())
    return StageRun(harness_session.context(cell, which, recorder))


@pytest.fixture
def calibration(harness_session: HarnessSession, cell: Cell) -> CalibrationArtifacts | None:
    """The cell's FP8 calibration artifacts (None for BF16): calibrate once, derive many."""
    with as_pytest_outcomes():
        return harness_session.resources(cell).calibration()


@pytest.fixture
def server(harness_session: HarnessSession, cell: Cell) -> ServerHandle:
    """The cell's server: started once, shared by its serving, accuracy and throughput stages,
    stopped at the teardown of the cell's last stage (harness/cell_resources.py)."""
    with as_pytest_outcomes():
        return harness_session.resources(cell).server()
