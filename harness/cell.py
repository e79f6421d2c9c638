"""One point of the matrix: what to qualify, with a stable readable id."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from dataclasses import replace
from enum import StrEnum
from typing import Any

from harness.devices import ranks
from harness.gates import GateSpec
from harness.settings import StageSettings


class Stage(StrEnum):
    """Stages of a cell, in the order they run."""

    PREFLIGHT = "preflight"
    COLLECTIVES = "collectives"
    CALIBRATION = "calibration"
    SERVING = "serving"
    ACCURACY = "accuracy"
    THROUGHPUT = "throughput"

    @property
    def order(self) -> int:
        return STAGE_ORDER.index(self)


STAGE_ORDER: tuple[Stage, ...] = tuple(Stage)
STAGE_NAMES: tuple[str, ...] = tuple(s.value for s in Stage)
# Stages that only make sense for an FP8 cell (a BF16 cell has nothing to calibrate).
FP8_ONLY_STAGES = frozenset({Stage.CALIBRATION})


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """What the harness must know about a model to plan and validate cells."""

    name: str
    path: str | None = None
    hub_id: str | None = None
    architecture: str = "llama"
    moe: bool = False
    num_experts: int = 0
    num_attention_heads: int | None = None
    num_kv_heads: int | None = None
    served_name: str | None = None

    @property
    def source(self) -> str:
        """Where the weights come from: the local path when given, else the hub id."""
        return self.path or self.hub_id or self.name


DEFAULT_SETTINGS = StageSettings()


def format_cell_id(
    model: str, device: str, nodes: int, tp: int, pp: int, ep: int, quantization: str, kv: str
) -> str:
    """`model/device[-nN]/tpT[-ppP][-epE]/quant-kv-dtype`: readable and stable across runs."""
    place = device if nodes == 1 else f"{device}-n{nodes}"
    par = f"tp{tp}"
    if pp > 1:
        par += f"-pp{pp}"
    if ep > 1:
        par += f"-ep{ep}"
    return f"{model}/{place}/{par}/{quantization}-kv-{kv}"


def bf16_twin_id(cell_id: str) -> str:
    """The BF16 baseline an FP8 cell is judged against: same model, device and parallelism."""
    return cell_id.rsplit("/", 1)[0] + "/bf16-kv-auto"


@dataclass(frozen=True, slots=True)
class Cell:
    """A matrix point. Immutable; `id` is stable across runs for history and baselines."""

    model: ModelFacts
    device: str
    tp: int = 1
    pp: int = 1
    ep: int = 1
    nodes: int = 1
    kv_cache_dtype: str = "auto"
    quantization: str = "bf16"
    stages: tuple[Stage, ...] = STAGE_ORDER
    gates: Mapping[str, GateSpec] = field(default_factory=dict, hash=False, compare=False)
    settings: StageSettings = field(default=DEFAULT_SETTINGS, hash=False, compare=False)
    backend_options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    index: int = field(default=0, compare=False)

    @property
    def id(self) -> str:
        return format_cell_id(
            self.model.name,
            self.device,
            self.nodes,
            self.tp,
            self.pp,
            self.ep,
            self.quantization,
            self.kv_cache_dtype,
        )

    @property
    def world_size(self) -> int:
        """Ranks the cell runs on: TP x PP, times the DP factor expert parallelism adds."""
        return ranks(self.tp, self.pp, self.ep)

    @property
    def is_fp8(self) -> bool:
        return self.quantization == "fp8"

    @property
    def multi_node(self) -> bool:
        return self.nodes > 1

    def with_serving_host(self, host: str) -> Cell:
        """The cell served at `host` (a `pytest -n` unit's leased node on another host)."""
        serving = self.settings.serving.model_copy(update={"host": host})
        return replace(self, settings=self.settings.model_copy(update={"serving": serving}))

    def runs(self, stage: Stage | str) -> bool:
        """Whether this cell has `stage` in its stage list."""
        return Stage(stage) in self.stages

    def __str__(self) -> str:
        return self.id
