"""What both backends' serving mixins share: the server spec and the --plan commands.

The backends differ in how they build `vllm serve`, lm_eval and `vllm bench serve` (their
serve_command / accuracy_command / bench_command); how those become a ServerSpec and a plan
is the same, and lives here once.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any
from typing import Protocol

from harness.backends.contracts import ClientBackend
from harness.backends.contracts import ServingBackend
from harness.calibration.artifacts import CalibrationArtifacts
from harness.cell import Cell
from harness.process import Command
from harness.serving.inc_plugin import READY_MARK
from harness.serving.server import ServerSpec

if TYPE_CHECKING:
    from harness.serving.commands import AccuracyTask

PLAN_PORT = 8688  # the seeds' port, shown by --plan; a run picks a free port


class ServingParts(ServingBackend, ClientBackend, Protocol):
    """What ServingPlans needs of the backend's serving mixin (beyond the stage contracts)."""

    def serve_command(
        self,
        cell: Cell,
        port: int,
        calibration: CalibrationArtifacts | None,
        workdir: Path | None = None,
    ) -> Command: ...

    def served_name(self, cell: Cell) -> str: ...

    def serving_facts(self, cell: Cell) -> dict[str, Any]: ...


class ServingPlans:
    """Mixin: the server spec and plans, from the serving mixin's `ServingParts`."""

    if TYPE_CHECKING:  # what the backend's serving mixin provides

        def serve_command(
            self, cell: Cell, port: int, calibration: Any, workdir: Path | None = None
        ) -> Command: ...

        def serve_prechecks(self, cell: Cell) -> list[tuple[Command, Any]]: ...

        def served_name(self, cell: Cell) -> str: ...

        def serving_facts(self, cell: Cell) -> dict[str, Any]: ...

        def accuracy_task(
            self, cell: Cell, workdir: Path, write: bool = True
        ) -> AccuracyTask: ...

        def accuracy_command(
            self, cell: Cell, base_url: str, task: AccuracyTask, workdir: Path
        ) -> Command: ...

        def bench_command(
            self, cell: Cell, base_url: str, concurrency: int, workdir: Path
        ) -> Command: ...

    def server_spec(
        self: ServingParts,
        cell: Cell,
        port: int,
        calibration: CalibrationArtifacts | None,
        workdir: Path | None = None,
    ) -> ServerSpec:
        s = cell.settings.serving
        return ServerSpec(
            command=self.serve_command(cell, port, calibration, workdir),
            host=s.host,
            port=port,
            served_name=self.served_name(cell),
            ready_timeout_s=s.ready_timeout_s,
            # INC must say it prepared the model, or the server serves BF16 weights
            ready_marks=(READY_MARK,) if cell.is_fp8 else (),
            smoke_max_tokens=s.smoke_max_tokens,
            facts=self.serving_facts(cell),
        )

    def _plan_url(self: ServingParts, cell: Cell) -> str:
        s = cell.settings.serving
        return f"http://{s.host}:{s.port or PLAN_PORT}"

    def plan_serving(self: ServingParts, cell: Cell, workdir: Path) -> list[Command]:
        checks = [cmd for cmd, _ in self.serve_prechecks(cell)]
        port = cell.settings.serving.port
        cmd = self.serve_command(cell, port or PLAN_PORT, None, workdir)
        if not port:
            note = cmd.description + "; a run picks a free port"
            cmd = dataclasses.replace(cmd, description=note)
        exports = getattr(self, "plan_ray_exports", None)
        before = list(exports(cell, cmd)) if exports is not None else []
        return [*before, *checks, cmd]

    def plan_accuracy(self: ServingParts, cell: Cell, workdir: Path) -> list[Command]:
        task = self.accuracy_task(cell, workdir, write=False)
        return [self.accuracy_command(cell, ServingPlans._plan_url(self, cell), task, workdir)]

    def plan_throughput(self: ServingParts, cell: Cell, workdir: Path) -> list[Command]:
        url = ServingPlans._plan_url(self, cell)
        return [
            self.bench_command(cell, url, c, workdir)
            for c in cell.settings.throughput.concurrencies
        ]
