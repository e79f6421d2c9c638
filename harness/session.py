"""The run as a pytest plugin object: cells selected, stages ordered and blocked, results recorded.

`plugin.pytest_configure` builds one `HarnessSession` and registers it with pytest's plugin
manager only for suite runs (as pytest-xdist registers its `DSession`), so every hook below
runs only when there is a run and needs no "is there a session?" guard. What a stage needs is
handed to it explicitly: its `StageContext` (via the `stage` fixture) and its cell's resources
(harness/cell_resources.py). End-of-run files are written by harness/report/run_end.py.
"""

from __future__ import annotations

import fnmatch
import functools
import gc
import os
import platform
import signal
import subprocess
import sys
import threading
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

import pytest
from _pytest.nodes import Node

from harness import __version__
from harness.backends.contracts import Backend
from harness.cell import Cell
from harness.cell import Stage
from harness.cell import bf16_twin_id
from harness.cell_resources import CellResources
from harness.cell_resources import CellSlot
from harness.errors import HarnessError
from harness.matrix import Matrix
from harness.options import RunOptions
from harness.plan import render_plan
from harness.process import kill_all_groups
from harness.recording import one_line
from harness.recording import stage_result
from harness.references import FallbackReferences
from harness.references import References
from harness.references import RunReferences
from harness.report.junit import junit_case
from harness.report.run_end import finish_run
from harness.report.run_end import load_baseline
from harness.results import ResultStore
from harness.results import RunStore
from harness.results import new_run_id
from harness.results import now_iso
from harness.results import read_records
from harness.results import stage_results
from harness.run_ending import SignalWatch
from harness.run_ending import attempt_stages
from harness.run_ending import end_record
from harness.run_ending import ending_line
from harness.run_ending import signals_deferred
from harness.stages.base import Recorder
from harness.stages.base import StageContext
from harness.workplan.session_units import UnitSession

if TYPE_CHECKING:  # the history package (SQLAlchemy) loads only when a run uses it
    from harness.history.context import RunContext
    from harness.history.writer import HistoryWriter
    from harness.report.against_history import AgainstHistory

STAGE_MARKERS = {s.value: s for s in Stage}
PLUGIN_NAME = "harness-session"
_STAGE_KEY = pytest.StashKey["Stage | None"]()
RECORDER_KEY = pytest.StashKey[Recorder]()


def stage_of(node: pytest.Item | pytest.Collector | Node) -> Stage | None:
    """The stage a suite test belongs to: its stage marker (`pytestmark = pytest.mark.<stage>`).

    Looked up like `iter_markers` (own marks first, then the parents'), but each node keeps its
    answer, so a module's marks are read once rather than once per cell of a large matrix."""
    if _STAGE_KEY not in node.stash:
        found = next(
            (STAGE_MARKERS[m.name] for m in node.own_markers if m.name in STAGE_MARKERS), None
        )
        if found is None and node.parent is not None:
            found = stage_of(node.parent)
        node.stash[_STAGE_KEY] = found
    return node.stash[_STAGE_KEY]


def cell_of(item: pytest.Item) -> Cell | None:
    callspec = getattr(item, "callspec", None)
    value = callspec.params.get("cell") if callspec else None
    return value if isinstance(value, Cell) else None


def twin_group(cell_id: str) -> str:
    """Cells judged against each other (an FP8 cell and its BF16 twin) share this scope."""
    return bf16_twin_id(cell_id).rsplit("/", 1)[0]


def stop_on_sigterm() -> None:
    """Turn SIGTERM (CI timeouts, `kill`) into KeyboardInterrupt so pytest unwinds: fixtures and
    sessionfinish run and every process group the harness started is stopped."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def _raise(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _raise)


def resume_run(results_dir: Path, which: str) -> str:
    """The run --resume continues: an id under `results_dir`, or `latest`; a missing one is an
    error listing the runs there are."""
    store = ResultStore(results_dir)
    run_id = store.latest() if which == "latest" else which
    if run_id is None or run_id not in store.runs():
        raise HarnessError(
            f"--resume {which}: no such run in {results_dir} "
            f"(runs: {', '.join(store.runs()[-5:]) or 'none'})"
        )
    return run_id


def passed_stages(path: Path) -> set[tuple[str, str]]:
    """(cell, stage) of every stage whose last record in the run passed."""
    return {(r.cell, r.stage) for r in stage_results(path) if r.status == "passed"}


def _git_commit(root: Path) -> str:
    """The harness checkout's commit, `-dirty` when tracked files differ from it (a result of
    uncommitted code must not pass for the commit's)."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=7"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip()


class HarnessSession(UnitSession):
    """The run's matrix, backend, store and per-cell resources; a pytest plugin object."""

    def __init__(
        self,
        options: RunOptions,
        matrix: Matrix,
        backend: Backend,
        run_id: str | None = None,
        is_worker: bool = False,
    ) -> None:
        self.is_worker = is_worker  # an xdist worker appends to the controller's run
        self.options = options
        self.matrix = matrix
        self.backend = backend
        resumed = resume_run(options.results_dir, options.resume) if options.resume else None
        self.store = RunStore(options.results_dir, run_id or resumed or new_run_id())
        # --resume: the stages that passed in the run being continued (not run again)
        self.done = passed_stages(self.store.path) if resumed else set()
        self.failures: dict[str, str] = {}  # cell id -> the first failed stage, one line
        self.cells = CellSlot(
            backend, self.store, options.cache_dir, options.recalibrate_invalid
        )
        self.baseline = load_baseline(options.results_dir, options.baseline)
        self._params: dict[str, Any] = {}
        self._order = self._run_order()
        self._selected: frozenset[str] = frozenset()
        self._selected_pairs: list[tuple[str, str]] = []  # (cell id, stage) of the items
        self._selected_pair_set: frozenset[tuple[str, str]] = frozenset()  # the same, to look up
        self.signals = SignalWatch()  # which signal stopped the run, for its end record
        self._opened = False
        self.history: HistoryWriter | None = None
        if options.history_url:
            from harness.history.writer import HistoryWriter

            self.history = HistoryWriter(options.history_url)
        self.like: RunContext | None = None  # this run's context, for like-with-like history
        self.regressions: list[str] = []  # against --baseline, set at session end

    # selection and order ---------------------------------------------------------------
    def cells_for(self, stage: Stage) -> list[Cell]:
        """Cells that run `stage`, after --cells and --stages."""
        if self.options.stages is not None and stage not in self.options.stages:
            return []
        return [c for c in self.matrix.cells if c.runs(stage) and self._cell_selected(c)]

    def _cell_selected(self, cell: Cell) -> bool:
        globs = self.options.cells
        return globs is None or any(fnmatch.fnmatchcase(cell.id, g) for g in globs)

    def param_for(self, cell: Cell) -> Any:
        """The cell as a pytest parameter (id and device marker), built once for all suites."""
        param = self._params.get(cell.id)
        if param is None:
            param = pytest.param(cell, id=cell.id, marks=getattr(pytest.mark, cell.device))
            self._params[cell.id] = param
        return param

    def _run_order(self) -> dict[int, tuple[int, int, int]]:
        """Cells in matrix order, except that a BF16 twin runs just before the FP8 cells judged
        against it (so their accuracy gate finds its result, on whichever worker). By index:
        sorting 60,000 items must not format 60,000 cell ids."""
        first: dict[str, int] = {}
        order = {}
        for cell in self.matrix.cells:
            cid = cell.id
            group = first.setdefault(twin_group(cid), cell.index)
            order[cell.index] = (group, 0 if cid == bf16_twin_id(cid) else 1, cell.index)
        return order

    def sort_key(self, item: pytest.Item) -> tuple[tuple[int, int, int], int, str]:
        cell, stage = cell_of(item), stage_of(item)
        order = self._order.get(cell.index, (-1, 0, -1)) if cell else (-1, 0, -1)
        return (order, stage.order if stage else -1, item.nodeid)

    # the run store ---------------------------------------------------------------------
    def open_store(self) -> None:
        """The controller creates the run directory and its context line; workers append."""
        if self._opened or self.options.plan:
            return
        self._opened = True
        if self.is_worker or self.options.resume:  # the context line is written already
            line = next((r for r in read_records(self.store.path) if r.get("kind") == "run"), {})
            if self.options.resume and not self.is_worker:
                self.store.reopen({
                    "started": now_iso(),
                    "selection": list(self.options.selection),
                    "commit": _git_commit(Path(__file__).resolve().parent),
                    "kept": len(self.done),
                })
            self._remember_run(line)
            return
        from harness.history.context import local_fingerprint

        inventory = self.backend.inventory()
        context = {
            "kind": "run",
            "run_id": self.store.run_id,
            **self._context(inventory.detail),
            "host_fingerprint": local_fingerprint(self.backend.name, inventory.device or ""),
        }
        self.store.open({k: v for k, v in context.items() if k not in ("kind", "run_id")})
        self._remember_run(context)

    def _remember_run(self, line: dict[str, Any]) -> None:
        """The run's context for history queries, and its record in the history database (every
        xdist worker records it too: idempotent by run id, and its results need it first)."""
        from harness.history.context import RunContext

        self.like = RunContext.from_record(line)
        if self.history is not None and line:
            self.history.record_run(line, self.store.dir)

    def _context(self, inventory: str) -> dict[str, Any]:
        """What the run's first line says about it (matrix, commit, host, stack versions)."""
        return {
            "matrix": str(self.matrix.path),
            "matrix_name": self.matrix.name,
            "matrix_sha256": self.matrix.digest,
            "backend": self.backend.name,
            "harness_version": __version__,
            "commit": _git_commit(Path(__file__).resolve().parent),
            "selection": list(self.options.selection),
            "matrix_stages": sum(len(c.stages) for c in self.matrix.cells),
            "host": platform.node(),
            "python": platform.python_version(),
            "inventory": inventory,
            "versions": self.backend.stack_versions(),
            "started": now_iso(),
        }

    # what fixtures hand to stages --------------------------------------------------------
    def resources(self, cell: Cell) -> CellResources:
        """The cell's resources (the run directory exists before any stage writes in it)."""
        self.open_store()
        return self.cells.enter(cell)

    def context(self, cell: Cell, stage: Stage, recorder: Recorder) -> StageContext:
        resources = self.resources(cell)
        return StageContext(
            cell=cell,
            stage=stage,
            backend=self.backend,
            workdir=resources.workdir(stage),
            cache_dir=self.options.cache_dir,
            recorder=recorder,
            references=self._references(),
        )

    def _references(self) -> References:
        """BF16 twins of this run; then, with a history database, its last passing BF16 run.
        In a `pytest -n` run the twin runs beside: a lookup waits for its record first."""
        run = RunReferences(self.store, self._matrix_ids, self._selected)
        this_run: References = run
        if self.units is not None:
            from harness.workplan.twins import TwinWaitingReferences

            this_run = TwinWaitingReferences(
                run, self.store, self._selected_pair_set, self._twin_wait_s
            )
        history, like = self.history, self.like
        if history is None or like is None:
            return this_run
        run.use_expected = False  # this run's twin, then the history, then `expected`

        def from_history() -> References:  # SQLAlchemy and the stats load only when needed
            from harness.history.references import HistoryReferences

            return HistoryReferences(run, history.reader(), like)

        return FallbackReferences(this_run, from_history)

    @functools.cached_property
    def _cells_by_id(self) -> dict[str, Cell]:
        """The matrix's cells by id, the ids formatted once."""
        return {c.id: c for c in self.matrix.cells}

    @functools.cached_property
    def _matrix_ids(self) -> frozenset[str]:
        """Every cell id of the matrix (each stage's references word a miss)."""
        return frozenset(self._cells_by_id)

    def _twin_wait_s(self, cell_id: str) -> float:
        """How long an FP8 cell waits for its twin: the twin's start-up and accuracy time."""
        cell = self._cells_by_id.get(cell_id)
        if cell is None:
            return 0.0
        return cell.settings.serving.ready_timeout_s + cell.settings.accuracy.timeout_s

    # hooks: collection -----------------------------------------------------------------
    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        return [
            f"harness: matrix {self.matrix.name} ({self.matrix.path}), "
            f"{len(self.matrix.cells)} cells, backend {self.backend.name}, "
            f"results {self.store.dir}"
        ]

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "cell" not in metafunc.fixturenames:
            return
        stage = stage_of(metafunc.definition)
        if stage is None:
            raise pytest.UsageError(
                f"{metafunc.definition.nodeid}: a suite test needs a stage marker "
                "(pytestmark = pytest.mark.<stage>)"
            )
        # function scope: the session groups items by cell and owns per-cell resources, which
        # spares pytest's session-scope reordering (seconds for a 10,000-cell matrix)
        metafunc.parametrize("cell", [self.param_for(c) for c in self.cells_for(stage)])

    @pytest.hookimpl(wrapper=True)
    def pytest_collection(self, session: pytest.Session) -> Generator[None, None, Any]:
        # A 10,000-cell matrix makes 60,000 items that live all run: the cyclic GC re-scanning
        # them as they pile up cost two thirds of collection (benchmarks/bench_collection.py).
        # Collect with it paused, then freeze the survivors out of its way; RSS is unchanged.
        gc.disable()
        try:
            return (yield)
        finally:
            gc.freeze()
            gc.enable()

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(
        self, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        empty = [i for i in items if stage_of(i) is not None and cell_of(i) is None]
        if self.done:  # --resume: what passed keeps its record and does not run again
            empty += [i for i in items if self._passed_before(i)]
        if empty:
            config.hook.pytest_deselected(items=empty)
        items[:] = sorted((i for i in items if i not in empty), key=self.sort_key)
        ids = {id(c): c.id for c in map(cell_of, items) if c is not None}  # cells are shared
        self._selected = frozenset(ids.values())  # built once: every stage's references use it
        self._selected_pairs = [
            (ids[id(cell)], stage.value)
            for cell, stage in ((cell_of(i), stage_of(i)) for i in items)
            if cell is not None and stage is not None
        ]
        self._selected_pair_set = frozenset(self._selected_pairs)

    def _passed_before(self, item: pytest.Item) -> bool:
        cell, stage = cell_of(item), stage_of(item)
        return cell is not None and stage is not None and (cell.id, stage.value) in self.done

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        """xdist: every worker appends to the controller's run, in its units."""
        self.open_store()
        node.workerinput["harness_run_id"] = self.store.run_id
        if self.shape is not None:
            node.workerinput["harness_cluster"] = self.shape.as_record()

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool | None:
        if self.units is not None:  # an xdist worker of a unit-scheduled run
            from harness.workplan.worker import run_loop

            return run_loop(session, self.units)
        if not self.options.plan:
            return None
        pairs = [(cell_of(i), stage_of(i)) for i in session.items]
        text = render_plan([(c, s) for c, s in pairs if c and s], self.backend, self.store.dir)
        session.config.get_terminal_writer().line(text)
        return True

    # hooks: each stage test ----------------------------------------------------------------
    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        cell, stage = cell_of(item), stage_of(item)
        if cell is None or stage is None:
            return
        item.stash[RECORDER_KEY] = rec = Recorder()
        if self.units is not None:
            self._enter_unit(item, cell, stage, rec)
        earlier = self.failures.get(cell.id)
        reason = f"earlier stage {earlier}" if earlier else self.backend.skip_reason(cell, stage)
        if reason:
            pytest.skip(reason)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        cell, stage = cell_of(item), stage_of(item)
        final = report.when == "call" or (report.when == "setup" and not report.passed)
        if cell is None or stage is None or not final:
            return report
        rec = item.stash.get(RECORDER_KEY, None) or Recorder()
        result = stage_result(cell, stage, report, rec, self.backend.name, self.store.dir)
        if result.status == "failed" and cell.id not in self.failures:
            self.failures[cell.id] = f"{stage.value} failed: {one_line(result.message, cell.id)}"
        if not self.options.plan:
            self.open_store()
            self.store.append(result)  # the record of truth first, then the history
            if self.history is not None:
                self.history.record_result(self.store.run_id, result)
        # like record_property: junitxml writes the item's properties with its teardown report
        item.user_properties.append(("cell", cell.id))
        for name, value in result.metrics.items():
            item.user_properties.append((f"{stage.value}.{name}", value))
        case = junit_case(result, self.store.dir, os.environ.get("HARNESS_REPORT_URL"))
        item.user_properties.extend(case.properties)
        if case.message:  # the failure CI shows: reason, fix and the log's last lines
            report.longrepr = case.message
        return report

    def pytest_runtest_teardown(self, item: pytest.Item, nextitem: pytest.Item | None) -> None:
        """The release point of a cell's resources: its last stage test has run."""
        self.cells.release_unless(cell_of(nextitem) if nextitem is not None else None)

    # hooks: the end ------------------------------------------------------------------------
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        # a second Ctrl-C while the groups stop and the reports are written waits (30 s at most)
        with signals_deferred(30.0):
            self.cells.close()
            kill_all_groups()
            if self.units is not None:  # a -n worker's lease goes back however the run ended
                self.units.leave()
            if self.is_worker or self.options.plan:
                return
            ending = self._record_end(int(session.exitstatus))
            against = self._against_history()
            self.regressions = finish_run(
                self.store, self.matrix.name, self.baseline, self.options.compare_fail, ending,
                against.lines if against else (),
            )
            self.regressions += against.failing if against else []
            unwritten = self.history.close(self.store.dir) if self.history is not None else None
            if unwritten:
                print(f"harness: {unwritten}", file=sys.stderr)
        if self.regressions and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        """Give the signal handlers back (in-process runs, e.g. pytester, must not stack them);
        the controller of a `-n` run stops the Ray cluster it started (or leaves a joined one)."""
        self.signals.uninstall()
        if self.shape is not None:
            from harness import cluster

            cluster.shutdown_shared()

    def _against_history(self) -> AgainstHistory | None:
        """This run's gated figures against their history's noise, with the change points."""
        reader = self.history.reader() if self.history is not None else None
        if reader is None or self.like is None or not self.store.path.is_file():
            return None
        from harness.history.url import HistoryError
        from harness.report.against_history import against_history

        gated = {key for cell in self.matrix.cells for key in cell.gates}
        try:
            return against_history(
                reader, self.like, stage_results(self.store.path), gated,
                self.options.compare_fail,
            )
        except HistoryError as exc:
            print(f"harness: history not consulted at the run's end ({exc})", file=sys.stderr)
            return None

    def _record_end(self, exit_status: int) -> str:
        """Append the run's end record (completed / interrupted, stages never run); return the
        line that heads its reports when it did not complete ("" when it did)."""
        if not self.store.path.is_file():
            return ""
        selected = self._selected_pairs or self.collected_pairs() or [
            (c.id, s.value) for s in Stage for c in self.cells_for(s)
            if (c.id, s.value) not in self.done  # --resume: passed before, not run again
        ]
        recorded = attempt_stages(read_records(self.store.path))  # this attempt's only
        record = end_record(exit_status, self.signals.first, selected, recorded)
        self.store.end(record)
        return ending_line(record)

    def pytest_terminal_summary(self, terminalreporter: Any, config: pytest.Config) -> None:
        if self.options.plan:
            return
        summary = self.store.dir / "summary.md"
        if summary.is_file():
            terminalreporter.section("harness summary")
            terminalreporter.write(summary.read_text(encoding="utf-8"))
            terminalreporter.write_line(f"results: {self.store.path}")
        if self.baseline is not None:
            terminalreporter.section("regressions vs baseline", red=bool(self.regressions))
            for line in self.regressions or ["none"]:
                terminalreporter.write_line(line)
            terminalreporter.write_line(f"comparison: {self.store.dir / 'compare.md'}")
        elif self.regressions:  # against the history's noise (a --compare-fail names them)
            terminalreporter.section("regressions vs history", red=True)
            for line in self.regressions:
                terminalreporter.write_line(line)
