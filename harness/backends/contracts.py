"""The backend contracts: every backend member a stage or the calibration service uses.

One Protocol per stage concern, composed into `Backend`. Stages and services are typed with
the narrowest contract they need, and `mypy --strict harness` checks that both backends
satisfy `Backend` (see the `_conforms` assignments at the end of each backend package), so a
member a stage calls but a backend lacks is a type error, not an AttributeError at night.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any
from typing import Protocol
from typing import runtime_checkable

if TYPE_CHECKING:
    from harness.backends.base import Check
    from harness.backends.base import Inventory
    from harness.calibration.artifacts import CalibrationArtifacts
    from harness.calibration.recipe import CalibrationJob
    from harness.calibration.recipe import Derivation
    from harness.calibration.recipe import Recipe
    from harness.cell import Cell
    from harness.cell import Stage
    from harness.cluster import RayCluster
    from harness.cluster_layout import Placement
    from harness.collectives.bandwidth import BandwidthRow
    from harness.collectives.launch import CommandOutput
    from harness.process import Command
    from harness.serving.commands import AccuracyTask
    from harness.serving.server import ServerSpec

# what a serving precheck's output must satisfy: None when fine, else the problem
PrecheckVerdict = Callable[[str], "str | None"]
# the probe's facts by node ("local" when Ray is not used)
NodeFacts = Mapping[str, dict[str, Any]]


class CoreBackend(Protocol):
    """What every stage may ask: identity, devices here, why a stage cannot run, env, plans."""

    name: str
    devices: frozenset[str]
    options: dict[str, Any]  # the run's options (workdir, cache_dir)

    def inventory(self) -> Inventory:
        """Discover devices; never raises for 'no devices' (that is `missing_reason`)."""
        ...

    def skip_reason(self, cell: Cell, stage: Stage) -> str | None:
        """Why `stage` of `cell` cannot run here, and how to lift it; None if it can."""
        ...

    def cell_env(self, cell: Cell) -> dict[str, str]:
        """Environment every command of the cell gets (offline flags, thread binding, ...)."""
        ...

    def extra_env(self, cell: Cell | None) -> dict[str, str]:
        """backend_options.env of the run and the cell."""
        ...

    def stack_versions(self) -> dict[str, str | None]:
        """Versions of the serving stack here (None: not installed), kept with the run."""
        ...

    def plan(self, cell: Cell, stage: Stage, workdir: Path) -> list[Command]:
        """The exact commands `stage` of `cell` would run, for --plan and golden tests."""
        ...


class RayBackend(Protocol):
    """Where a cell's Ray work goes: its placement and the cluster that holds it."""

    def ray_placement(self, cell: Cell, nodes: int | None = None) -> Placement: ...

    def ray_cluster(self, cell: Cell) -> RayCluster: ...


class PreflightBackend(RayBackend, Protocol):
    """Node checks: what the probe gathers, and the checks on what it found."""

    ray_hint: str
    starts_local_ray: bool
    per_node_env: frozenset[str]  # env names that may differ between nodes

    def preflight_spec(self, cell: Cell) -> dict[str, Any]: ...

    def preflight_checks(self, cell: Cell, facts: NodeFacts) -> list[Check]: ...

    def device_facts(self, facts: Mapping[str, Any]) -> dict[str, Any]:
        """The facts (driver, firmware, ...) every node must agree on."""
        ...


class CollectivesBackend(RayBackend, Protocol):
    """The all_reduce benchmark: its metric names, hint, output collection and figures."""

    collectives_metric_names: tuple[str, str]  # (algbw, busbw)
    collectives_hint: str

    def collectives_nodes(self, cell: Cell) -> int:
        """The nodes the benchmark spans (gaudi: the calibration's too, seed 000)."""
        ...

    def collectives_collect(self, cell: Cell, workdir: Path) -> dict[int, list[str]]: ...

    def collectives_figures(
        self, cell: Cell, workdir: Path, outputs: Sequence[CommandOutput]
    ) -> tuple[list[BandwidthRow], bool | None]: ...


class CalibrationBackend(Protocol):
    """How a calibration is planned and run here; the service knows nothing else of us."""

    name: str
    options: dict[str, Any]

    def skip_reason(self, cell: Cell, stage: Stage) -> str | None: ...

    def extra_env(self, cell: Cell | None) -> dict[str, str]: ...

    def calibration_device(self, cell: Cell) -> str: ...

    def calibration_max_seq_len(self, cell: Cell) -> int | None: ...

    def calibration_root(self, cell: Cell, cache_dir: Path) -> Path: ...

    def calibration_dataset(
        self, cell: Cell, cache_dir: Path, materialize: bool = True
    ) -> tuple[Path, str]: ...

    def calibration_configs(
        self, job: CalibrationJob
    ) -> tuple[dict[str, Any], dict[str, Any]]: ...

    def calibration_recipe(self, job: CalibrationJob, derivation: Derivation | None) -> Recipe: ...

    def derivation_recipe(self, job: CalibrationJob, d: Derivation) -> Recipe: ...


class ServingBackend(Protocol):
    """The server of a cell and its prechecks."""

    def serve_prechecks(self, cell: Cell) -> list[tuple[Command, PrecheckVerdict]]: ...

    def server_spec(
        self,
        cell: Cell,
        port: int,
        calibration: CalibrationArtifacts | None,
        workdir: Path | None = None,
    ) -> ServerSpec: ...


class ClientBackend(Protocol):
    """The clients run against a cell's server: lm-eval and the serving benchmark."""

    def accuracy_task(self, cell: Cell, workdir: Path, write: bool = True) -> AccuracyTask: ...

    def accuracy_command(
        self, cell: Cell, base_url: str, task: AccuracyTask, workdir: Path
    ) -> Command: ...

    def bench_command(
        self, cell: Cell, base_url: str, concurrency: int, workdir: Path
    ) -> Command: ...


@runtime_checkable
class Backend(
    CoreBackend,
    PreflightBackend,
    CollectivesBackend,
    CalibrationBackend,
    ServingBackend,
    ClientBackend,
    Protocol,
):
    """Where the stages run: all of the above. Methods a backend cannot honour return a skip
    reason (`skip_reason`) instead of raising."""
