"""The run: cells selected, stages ordered and blocked, results recorded as each stage ends."""

from __future__ import annotations

import contextlib
import datetime as dt
import fnmatch
import platform
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from harness import __version__
from harness.backends import Backend
from harness.cell import Cell
from harness.cell import Stage
from harness.errors import HarnessError
from harness.matrix import Matrix
from harness.options import RunOptions
from harness.process import kill_all_groups
from harness.report.markdown import render_summary
from harness.results import RunStore
from harness.results import StageResult
from harness.results import new_run_id
from harness.results import now_iso
from harness.results import write_atomic
from harness.stages import GateFailed
from harness.stages import Recorder
from harness.stages import StageContext
from harness.stages import StageSkipped
from harness.stages import runner_for

STAGE_MARKERS = {s.value: s for s in Stage}


_STAGE_KEY = pytest.StashKey["Stage | None"]()


def stage_of(node: pytest.Item | pytest.Collector) -> Stage | None:
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


def cell_of(item: pytest.Item) -> Cell | None:
    callspec = getattr(item, "callspec", None)
    value = callspec.params.get("cell") if callspec else None
    return value if isinstance(value, Cell) else None


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


class HarnessSession:
    """Holds the matrix, backend and run store; the plugin's hooks call into it."""

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
        self.store = RunStore(options.results_dir, run_id or new_run_id())
        self.failures: dict[str, str] = {}
        self.results: dict[tuple[str, str], StageResult] = {}
        self._opened = False
        self._calibrations: dict[str, Any] = {}
        self._params: dict[str, Any] = {}
        self.baseline_id: str | None = None
        self.baseline = self.load_baseline()
        self._server: tuple[str, Any, contextlib.ExitStack] | None = None

    # selection -----------------------------------------------------------
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

    @staticmethod
    def sort_key(item: pytest.Item) -> tuple[int, int, str]:
        cell, stage = cell_of(item), stage_of(item)
        return (cell.index if cell else -1, stage.order if stage else -1, item.nodeid)

    # run store -----------------------------------------------------------
    def open_store(self) -> None:
        """The controller creates the run directory and its context line; workers append."""
        if self._opened or self.options.plan:
            return
        self._opened = True
        if self.is_worker:
            return
        self.store.open(
            {
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
                "inventory": self.backend.inventory().detail,
                "versions": self.backend.stack_versions(),
                "started": now_iso(),
            }
        )

    # per test -------------------------------------------------------------
    def blocked_reason(self, cell: Cell, stage: Stage) -> str | None:
        """An earlier failed stage of the cell, or the backend's reason it cannot run here."""
        earlier = self.failures.get(cell.id)
        if earlier:
            return f"earlier stage {earlier}"
        return self.backend.skip_reason(cell, stage)

    def context(self, cell: Cell, stage: Stage, recorder: Recorder) -> StageContext:
        self.open_store()
        return StageContext(
            cell=cell,
            stage=stage,
            backend=self.backend,
            workdir=self.store.cell_dir(cell.id, stage.value),
            cache_dir=self.options.cache_dir,
            recorder=recorder,
            lookup=self.metrics_of,
        )

    def metrics_of(self, cell_id: str, stage: str) -> Mapping[str, Any] | None:
        result = self.results.get((cell_id, stage))
        return result.metrics if result and result.status == "passed" else None

    def record(
        self, cell: Cell, stage: Stage, report: pytest.TestReport, rec: Recorder | None
    ) -> StageResult:
        """Turn a test report into a StageResult, append it to results.jsonl, note failures."""
        rec = rec or Recorder()
        status = {"passed": "passed", "failed": "failed", "skipped": "skipped"}[report.outcome]
        message = _message(report)
        if status == "failed" and cell.id not in self.failures:
            self.failures[cell.id] = f"{stage.value} failed: {_one_line(message, cell.id)}"
        result = StageResult(
            cell=cell.id,
            stage=stage.value,
            status=status,
            message=message,
            metrics=dict(rec.metrics),
            gates=[g.as_dict() for g in rec.gates],
            artifacts=_relative(rec.artifacts, self.store.dir),
            started=_started(report),
            duration_s=round(report.duration, 3),
            device=cell.device,
            backend=self.backend.name,
        )
        self.results[(cell.id, stage.value)] = result
        if not self.options.plan:
            self.open_store()
            self.store.append(result)
        return result

    # per-cell resources: items run grouped by cell, so one of each is alive at a time ----------
    def calibration_for(self, cell: Cell) -> Any:
        """The cell's calibration artifacts, computed once per cell (None for BF16)."""
        if cell.id not in self._calibrations:
            from harness.stages import calibration

            self._calibrations[cell.id] = calibration.ensure(self, cell)
        return self._calibrations[cell.id]

    def server_for(self, cell: Cell) -> Any:
        """The cell's running server, started on first use and shared by its later stages."""
        if self._server is not None and self._server[0] == cell.id:
            return self._server[1]
        self.stop_server()
        from harness.stages import serving

        calibration = self.calibration_for(cell)
        stack = contextlib.ExitStack()
        handle = stack.enter_context(serving.serve(self, cell, calibration))
        self._server = (cell.id, handle, stack)
        return handle

    def stop_server(self) -> None:
        if self._server is not None:
            _, _, stack = self._server
            self._server = None
            stack.close()

    def item_done(self, item: pytest.Item, nextitem: pytest.Item | None) -> None:
        """Stop the cell's server once its last stage has run (not at session end)."""
        if self._server is None:
            return
        upcoming = cell_of(nextitem) if nextitem is not None else None
        if upcoming is None or upcoming.id != self._server[0]:
            self.stop_server()

    def load_baseline(self) -> list[StageResult] | None:
        """The --baseline run's records, loaded before anything runs (a missing run fails fast)."""
        if self.options.baseline is None:
            return None
        from harness.results import ResultStore

        store = ResultStore(self.options.results_dir)
        run_id = store.latest() if self.options.baseline == "latest" else self.options.baseline
        if run_id is None or run_id not in store.runs():
            raise HarnessError(
                f"--baseline {self.options.baseline}: no such run in {self.options.results_dir} "
                f"(runs: {', '.join(store.runs()[-5:]) or 'none'})"
            )
        self.baseline_id = run_id
        return store.load(run_id)

    def _write_report(self) -> None:
        """report.md (+ trend.png) for sign-off; a broken plot must not cost the run's end."""
        from harness.report import qualification
        from harness.results import ResultStore

        store = ResultStore(self.options.results_dir)
        try:
            run = qualification.load_run(store, self.store.run_id)
            history = qualification.earlier_runs(store, run)
            qualification.write_report(run, history, self.store.dir)
        except (OSError, ValueError, ImportError, RuntimeError) as exc:
            print(
                f"harness: report.md not written ({type(exc).__name__}: {exc}); "
                f"summary.md and results.jsonl are complete",
                file=sys.stderr,
            )

    def finish(self) -> list[str]:
        """Stop leftover processes; write summary.md (and compare.md with --baseline).

        Returns the regressions against the baseline, one line each (empty when none)."""
        self.stop_server()
        kill_all_groups()
        if not self.store.path.is_file():
            return []
        from harness.compare import compare
        from harness.compare import render_compare
        from harness.results import stage_results

        results = stage_results(self.store.path)
        summary = render_summary(results, self.matrix.name, self.store.run_id)
        write_atomic(self.store.dir / "summary.md", summary)
        self._write_report()
        if self.baseline is None:
            return []
        deltas = compare(self.baseline, results, self.options.compare_fail)
        write_atomic(
            self.store.dir / "compare.md",
            render_compare(deltas, self.baseline_id, self.store.run_id),
        )
        return [
            f"{d.cell}: {d.metric} {d.base:.4g} -> {d.value:.4g} {d.failure} "
            f"(baseline run {self.baseline_id})"
            for d in deltas
            if d.failure
        ]


def _started(report: pytest.TestReport) -> str:
    """When the stage's test began (the report is made at its end)."""
    start = getattr(report, "start", None) or time.time() - report.duration
    return dt.datetime.fromtimestamp(start, dt.UTC).isoformat(timespec="seconds")


def _message(report: pytest.TestReport) -> str:
    """The reason a person reads: the skip reason, the failure text (short), or a crash line."""
    if report.passed:
        return ""
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    text = report.longreprtext.strip()
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None and text.count("\n") > 20:  # a real traceback: keep its last word
        return str(crash.message).removeprefix("Failed: ")
    return text.removeprefix("Failed: ")[-4000:]


def _one_line(message: str, cell_id: str, limit: int = 400) -> str:
    """A failure as one line for later stages' skip reason: no cell prefix, hints kept."""
    text = " ".join(line.strip() for line in message.splitlines() if line.strip())
    text = text.removeprefix(f"{cell_id} ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _relative(artifacts: Mapping[str, str], root: Path) -> dict[str, str]:
    out = {}
    for name, path in artifacts.items():
        p = Path(path)
        out[name] = str(p.relative_to(root)) if p.is_relative_to(root) else str(p)
    return out


@contextlib.contextmanager
def as_pytest_outcomes() -> Iterator[None]:
    """Harness outcomes as pytest ones: skips skip, failures fail, no traceback."""
    skip, fail = None, None
    try:
        yield
    except StageSkipped as exc:
        skip = str(exc)
    except GateFailed as exc:
        fail = f"gate failed:\n{exc}"
    except HarnessError as exc:
        fail = str(exc)
    # raised outside the except blocks and `from None`: the report shows the message, no chain
    if skip is not None:
        raise pytest.skip.Exception(skip) from None
    if fail is not None:
        raise pytest.fail.Exception(fail, pytrace=False) from None


class StageRun:
    """What a suite test calls: runs the stage, turns harness outcomes into pytest outcomes."""

    def __init__(self, context: StageContext) -> None:
        self.context = context

    @property
    def recorder(self) -> Recorder:
        return self.context.recorder

    def run(self, **fixtures: Any) -> Recorder:
        start = time.monotonic()
        try:
            with as_pytest_outcomes():
                runner_for(self.context.stage)(self.context, **fixtures)
        finally:
            self.recorder.metric("stage_wall_s", round(time.monotonic() - start, 3))
        return self.recorder
