"""Serving stage: one server per cell, kept up for the cell's accuracy and throughput stages.

`serve(backend, cell, calibration, workdir)` is what the cell's resources
(harness/cell_resources.py) use: it asks the backend for the command (FP8 cells: `--quantization
inc` with the calibration's scales), starts it on a free port in its own process group, waits
for /health and the backend's log marks, sends the smoke chat completion, and stops the whole
group when the cell is done (or anything fails, times out or is interrupted). `run(ctx, server)`
records what serving established.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

from harness.backends.contracts import Backend
from harness.backends.contracts import ServingBackend
from harness.calibration.artifacts import CalibrationArtifacts
from harness.cell import Cell
from harness.cell import Stage
from harness.errors import HarnessError
from harness.errors import StageError
from harness.process import CommandFailed
from harness.process import placement_env
from harness.process import run as run_command
from harness.process import site
from harness.serving.http import free_port
from harness.serving.server import Server
from harness.serving.server import ServerFailed
from harness.serving.server import running
from harness.stages.base import StageContext
from harness.stages.base import StageSkipped

SERVER_LOG = "server.log"


@dataclass
class ServerHandle:
    """What later stages get: where the server answers, its log, and what it serves."""

    cell_id: str
    base_url: str
    served_name: str
    log_path: Path
    server: Server
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def ready_s(self) -> float | None:
        return self.server.ready_s

    @property
    def smoke(self) -> dict[str, Any]:
        return self.server.smoke

    def check_alive(self) -> None:
        """Raise ServerFailed if the server exited or logged a fatal error since it started."""
        self.server.check_alive()


def failure(cell: Cell, stage: Stage | str, exc: HarnessError) -> StageError:
    """A lifecycle or client failure as the stage's error (log tail in the text, hint apart)."""
    if isinstance(exc, ServerFailed):
        return StageError(cell.id, str(stage), str(exc), exc.hint)
    return StageError(cell.id, str(stage), str(exc))


def _prechecks(backend: ServingBackend, cell: Cell, workdir: Path) -> None:
    for i, (command, check) in enumerate(backend.serve_prechecks(cell)):
        try:
            output = run_command(command, workdir / f"precheck_{i}.log", timeout_s=120.0)
        except CommandFailed as exc:
            raise StageError(cell.id, Stage.SERVING.value, str(exc)) from None
        problem = check(output)
        if problem:
            raise StageError(cell.id, Stage.SERVING.value, problem, command.description)


@contextlib.contextmanager
def serve(
    backend: Backend, cell: Cell, calibration: CalibrationArtifacts | None, workdir: Path
) -> Iterator[ServerHandle]:
    """Start the cell's server (logs and prechecks in `workdir`) and yield its handle; stopped
    when the block ends."""
    reason = backend.skip_reason(cell, Stage.SERVING)
    if reason:
        raise StageSkipped(reason)
    if cell.is_fp8 and calibration is None:
        raise StageError(
            cell.id, Stage.SERVING.value, "an FP8 cell has no calibration to serve with",
            "the calibration stage must produce the cell's scales first",
        )
    if cell.model.path and not Path(cell.model.path).exists():
        raise StageError(
            cell.id, Stage.SERVING.value, f"no model at {cell.model.path}",
            f"check models.{cell.model.name}.path in the matrix (a relative path is relative "
            "to the matrix file)",
        )
    node = site()  # a `pytest -n` unit on another node: the server binds that node's address
    if node is not None:
        cell = cell.with_serving_host(node.address)
    settings = cell.settings.serving
    with contextlib.ExitStack() as stack:
        try:  # only the start-up is the serving stage's failure; the block's errors pass
            _prechecks(backend, cell, workdir)
            port = settings.port or (node.free_port() if node else free_port(settings.host))
            spec = backend.server_spec(cell, port, calibration, workdir)
            server = stack.enter_context(running(spec, workdir / SERVER_LOG))
        except (ServerFailed, CommandFailed) as exc:
            raise failure(cell, Stage.SERVING, exc) from None
        except HarnessError as exc:
            if isinstance(exc, StageError | StageSkipped):
                raise
            raise StageError(cell.id, Stage.SERVING.value, str(exc)) from None
        leased = sorted(placement_env().items())  # a `pytest -n` unit's devices
        placed = {"placement": " ".join(f"{k}={v}" for k, v in leased)} if leased else {}
        if node is not None:
            placed["node"] = node.label
        yield ServerHandle(
            cell.id, server.base_url, spec.served_name, server.log_path, server,
            {**spec.facts, **placed},
        )


def run(ctx: StageContext, server: ServerHandle) -> None:
    """Record readiness, the smoke request and what the cell is served as."""
    rec = ctx.recorder
    rec.artifact("server_log", server.log_path)
    rec.update(server.facts)
    rec.metric("ready_s", server.ready_s)
    rec.metric("smoke_latency_ms", server.smoke.get("latency_ms"))
    rec.metric("smoke_tokens", server.smoke.get("completion_tokens"))
    rec.metric("smoke_reply", str(server.smoke.get("reply", ""))[:200])
    try:
        server.check_alive()
    except ServerFailed as exc:
        raise failure(ctx.cell, ctx.stage, exc) from None
    ctx.check_gates()
