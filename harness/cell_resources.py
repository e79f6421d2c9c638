"""The resources of the cell whose stages are running: workdirs, calibration, server.

Items run grouped by cell (the session sorts them so; xdist keeps a cell on one worker), so one
cell's resources are alive at a time. `CellSlot.enter(cell)` hands a stage its cell's
resources, created on first use; the **release point** is `CellSlot.release_unless(next_cell)`,
which the session calls at the teardown of every stage test: when the next test belongs to
another cell (or there is none) the server is stopped there, not at session end. Session end,
Ctrl-C and a crash of a stage all pass through `close()` as well.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from harness.backends.contracts import Backend
from harness.calibration.artifacts import CalibrationArtifacts
from harness.cell import Cell
from harness.cell import Stage
from harness.results import RunStore
from harness.stages import calibration as calibration_stage
from harness.stages import serving as serving_stage
from harness.stages.serving import ServerHandle


class CellResources:
    """One cell's calibration artifacts (computed once) and server (started once)."""

    def __init__(
        self,
        cell: Cell,
        backend: Backend,
        store: RunStore,
        cache_dir: Path,
        recalibrate_invalid: bool = False,
    ) -> None:
        self.cell = cell
        self.backend = backend
        self.store = store
        self.cache_dir = cache_dir
        self.recalibrate_invalid = recalibrate_invalid
        self._calibration: tuple[CalibrationArtifacts | None] | None = None
        self._server: ServerHandle | None = None
        self._stack = contextlib.ExitStack()

    def workdir(self, stage: Stage) -> Path:
        """Where `stage` of this cell writes: <run>/cells/<cell>/<stage>."""
        return self.store.cell_dir(self.cell.id, stage.value)

    def calibration(self) -> CalibrationArtifacts | None:
        """The cell's FP8 calibration artifacts (None for BF16); a failure is not cached."""
        if self._calibration is None:
            self._calibration = (
                calibration_stage.ensure(
                    self.backend, self.cell, self.cache_dir, self.recalibrate_invalid
                ),
            )
        return self._calibration[0]

    def server(self) -> ServerHandle:
        """The cell's server: started on first use, shared by its later stages."""
        if self._server is None:
            served_with = self.calibration()
            serve = serving_stage.serve(
                self.backend, self.cell, served_with, self.workdir(Stage.SERVING)
            )
            self._server = self._stack.enter_context(serve)
        return self._server

    def close(self) -> None:
        """Stop the server (its whole process group) if one was started."""
        self._server = None
        self._stack.close()


class CellSlot:
    """Holds the resources of the current cell; a new cell releases the previous one."""

    def __init__(
        self, backend: Backend, store: RunStore, cache_dir: Path, recalibrate_invalid: bool = False
    ) -> None:
        self.backend = backend
        self.store = store
        self.cache_dir = cache_dir
        self.recalibrate_invalid = recalibrate_invalid
        self.current: CellResources | None = None

    def enter(self, cell: Cell) -> CellResources:
        if self.current is not None and self.current.cell.id == cell.id:
            return self.current
        self.close()
        self.current = CellResources(
            cell, self.backend, self.store, self.cache_dir, self.recalibrate_invalid
        )
        return self.current

    def release_unless(self, next_cell: Cell | None) -> None:
        """The release point: the cell's last stage has run unless `next_cell` is the same."""
        if self.current is not None and (next_cell is None or next_cell.id != self.current.cell.id):
            self.close()

    def close(self) -> None:
        current, self.current = self.current, None
        if current is not None:
            current.close()
