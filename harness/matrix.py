"""Matrix YAML: load (with `extends`), validate naming file and key, expand to Cells."""

from __future__ import annotations

import fnmatch
import hashlib
import itertools
from pathlib import Path
from typing import Any
from typing import Literal

from pydantic import BaseModel
from pydantic import ConfigDict
from pydantic import Field
from pydantic import ValidationError
from pydantic import field_validator

from harness.cell import FP8_ONLY_STAGES
from harness.cell import Cell
from harness.cell import ModelFacts
from harness.cell import Stage
from harness.cell import format_cell_id
from harness.devices import DEVICES
from harness.devices import backend_for
from harness.devices import nodes_for
from harness.errors import MatrixError
from harness.gates import GateSpec
from harness.gates import merge_gates
from harness.matrix_checks import check_bounds
from harness.matrix_checks import check_gates
from harness.matrix_checks import check_model_sources
from harness.matrix_checks import check_overrides_used
from harness.matrix_checks import check_rules
from harness.matrix_checks import check_stages
from harness.matrix_files import MATRICES_DIR
from harness.matrix_files import load_yaml
from harness.matrix_files import resolve_matrix_path
from harness.matrix_files import unknown_name as _unknown
from harness.matrix_files import validation_message as _validation_message
from harness.settings import BackendOptions
from harness.settings import StageSettings


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Strict):
    path: str | None = None
    hub_id: str | None = None
    architecture: str = "llama"
    moe: bool = False
    num_experts: int = Field(default=0, ge=0)
    num_attention_heads: int | None = Field(default=None, ge=1)
    num_kv_heads: int | None = Field(default=None, ge=1)
    served_name: str | None = None
    axes: Axes | None = None  # per-model axes replace the matrix's for this model


class Axes(_Strict):
    model: list[str] | None = Field(default=None, min_length=1)
    device: list[Literal["g2", "g3", "cpu"]] | None = Field(default=None, min_length=1)
    tp: list[int] | None = Field(default=None, min_length=1)
    pp: list[int] | None = Field(default=None, min_length=1)
    ep: list[int] | None = Field(default=None, min_length=1)
    nodes: list[int] | None = Field(default=None, min_length=1)
    kv_cache_dtype: list[str] | None = Field(default=None, min_length=1)
    quantization: list[Literal["bf16", "fp8"]] | None = Field(default=None, min_length=1)

    @field_validator("tp", "pp", "ep", "nodes")
    @classmethod
    def _positive(cls, values: list[int] | None) -> list[int] | None:
        for v in values or []:
            if v < 1:
                raise ValueError(f"{v} is not a positive integer")
        return values


ModelSpec.model_rebuild()

AXIS_NAMES = tuple(Axes.model_fields)
AXIS_DEFAULTS: dict[str, Any] = {
    "device": "cpu",
    "tp": 1,
    "pp": 1,
    "ep": 1,
    "nodes": 1,
    "kv_cache_dtype": "auto",
    "quantization": "bf16",
}


class Override(_Strict):
    cells: str  # glob on cell ids
    gates: dict[str, GateSpec] = Field(default_factory=dict)
    settings: dict[str, dict[str, Any]] = Field(default_factory=dict)
    backend_options: BackendOptions = BackendOptions()


class MatrixSpec(_Strict):
    name: str
    version: int = 1
    description: str = ""
    extends: str | None = None
    backend: Literal["cpu", "gaudi"] | None = None
    models: dict[str, ModelSpec]
    axes: Axes = Axes()
    include: list[dict[str, Any]] = Field(default_factory=list)
    exclude: list[dict[str, Any]] = Field(default_factory=list)
    stages: list[Stage] = Field(default_factory=lambda: list(Stage), min_length=1)
    gates: dict[str, GateSpec] = Field(default_factory=dict)
    settings: dict[str, dict[str, Any]] = Field(default_factory=dict)
    overrides: list[Override] = Field(default_factory=list)
    backend_options: BackendOptions = BackendOptions()


class Matrix:
    """A loaded, validated matrix and its cells."""

    def __init__(self, path: Path, spec: MatrixSpec, cells: list[Cell], digest: str) -> None:
        self.path = path
        self.spec = spec
        self.cells = cells
        self.digest = digest

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def backend(self) -> str:
        """The backend the matrix asks for: explicit, else the one its devices need."""
        if self.spec.backend:
            return self.spec.backend
        devices = {c.device for c in self.cells} or {"cpu"}
        return backend_for(devices)


def load_matrix(name_or_path: str | Path, search_dir: Path = MATRICES_DIR) -> Matrix:
    """Load, validate and expand a matrix; every problem is a MatrixError naming file and key."""
    path = resolve_matrix_path(name_or_path, search_dir)
    data = load_yaml(path)
    try:
        spec = MatrixSpec.model_validate(data)
    except ValidationError as exc:
        key, reason = _validation_message(exc)
        raise MatrixError(path, key, reason) from None
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return Matrix(path, spec, expand(spec, path), digest)


def _points(spec: MatrixSpec, path: Path) -> list[dict[str, Any]]:
    points: list[dict[str, Any]] = []
    global_axes = spec.axes.model_dump(exclude_none=True)
    model_names = global_axes.pop("model", None) or list(spec.models)
    for model in model_names:
        if model not in spec.models:
            raise MatrixError(path, "axes.model", _unknown("model", model, spec.models))
        axes = dict(global_axes)
        own = spec.models[model].axes
        if own is not None:
            axes.update(own.model_dump(exclude_none=True, exclude={"model"}))
        names = [n for n in AXIS_NAMES if n != "model"]
        values = [axes.get(n, [AXIS_DEFAULTS[n]]) for n in names]
        for combo in itertools.product(*values):
            points.append({"model": model, **dict(zip(names, combo, strict=True))})
    return points


def _matches(point: dict[str, Any], rule: dict[str, Any]) -> bool:
    return all(point.get(k) == v for k, v in rule.items())


KV_DTYPES = tuple(sorted({kv for d in DEVICES.values() for kv in d.kv_cache_dtypes}))


def _rules(spec: MatrixSpec, path: Path, section: str) -> list[dict[str, Any]]:
    rules = getattr(spec, section)
    return check_rules(section, rules, path, AXIS_NAMES, spec.models, KV_DTYPES)


def _gate_backend(spec: MatrixSpec, points: list[dict[str, Any]]) -> str | None:
    """The backend whose metric names gates use: explicit, else the one all devices need."""
    if spec.backend:
        return spec.backend
    backends = {DEVICES[p["device"]].backend for p in points if p["device"] in DEVICES}
    return backends.pop() if len(backends) == 1 else None


def expand(spec: MatrixSpec, path: Path) -> list[Cell]:
    """Product of the axes, minus exclude rules, plus include rules; validated, unique ids."""
    include, exclude = _rules(spec, path, "include"), _rules(spec, path, "exclude")
    check_stages([s.value for s in spec.stages], path)
    points = [p for p in _points(spec, path) if not any(_matches(p, r) for r in exclude)]
    for rule in include:
        points.append({**AXIS_DEFAULTS, **rule})
    resolved: dict[
        tuple[int, ...], tuple[StageSettings, dict[str, GateSpec], dict[str, Any]]
    ] = {}
    stages, backend = [s.value for s in spec.stages], _gate_backend(spec, points)
    check_gates(spec.gates, path, "gates", stages, backend)
    for i, ov in enumerate(spec.overrides):
        check_gates(ov.gates, path, f"overrides[{i}].gates", stages, backend)
    facts = {name: _model_facts(name, m, path) for name, m in spec.models.items()}
    cells: list[Cell] = []
    seen: set[str] = set()
    used: set[int] = set()
    for p in points:
        if p["model"] not in facts:
            raise MatrixError(path, "include", _unknown("model", p["model"], spec.models))
        cell_id = format_cell_id(
            p["model"],
            p["device"],
            p["nodes"],
            p["tp"],
            p["pp"],
            p["ep"],
            p["quantization"],
            p["kv_cache_dtype"],
        )
        if cell_id in seen:
            continue  # an include rule that repeats a product point adds nothing
        seen.add(cell_id)
        applied = tuple(
            i for i, ov in enumerate(spec.overrides) if fnmatch.fnmatchcase(cell_id, ov.cells)
        )
        used.update(applied)
        if applied not in resolved:
            resolved[applied] = _resolve(spec, path, applied, spec.gates)
        settings, gates, options = resolved[applied]
        cell = Cell(
            model=facts[p["model"]],
            device=p["device"],
            tp=p["tp"],
            pp=p["pp"],
            ep=p["ep"],
            nodes=p["nodes"],
            kv_cache_dtype=p["kv_cache_dtype"],
            quantization=p["quantization"],
            stages=_stages(spec, p["quantization"]),
            gates=gates,
            settings=settings,
            backend_options=options,
            index=len(cells),
        )
        reason = invalid_reason(cell) or backend_reason(spec.backend, cell)
        if reason:
            raise MatrixError(path, f"cell {cell_id}", reason)
        cells.append(cell)
    if not cells:
        raise MatrixError(path, "axes", "the matrix expands to no cells; check axes and exclude")
    check_model_sources(spec.models, path)
    check_overrides_used(spec.overrides, used, [c.id for c in cells], path)
    return cells


def _stages(spec: MatrixSpec, quantization: str) -> tuple[Stage, ...]:
    return tuple(s for s in spec.stages if quantization == "fp8" or s not in FP8_ONLY_STAGES)


def _resolve(
    spec: MatrixSpec, path: Path, applied: tuple[int, ...], base_gates: dict[str, GateSpec]
) -> tuple[StageSettings, dict[str, GateSpec], dict[str, Any]]:
    settings = {k: dict(v) for k, v in spec.settings.items()}
    gates = dict(base_gates)
    options = spec.backend_options.as_dict()
    for i in applied:
        ov = spec.overrides[i]
        for stage, values in ov.settings.items():
            settings.setdefault(stage, {}).update(values)
        gates = merge_gates(gates, ov.gates)
        for key in ov.gates:  # the merged gate: an override's min may pass the matrix's max
            check_bounds(gates[key], path, f"overrides[{i}].gates.{key}")
        extra = ov.backend_options.as_dict()
        if "env" in extra:  # an override's env adds to the matrix's
            extra["env"] = {**options.get("env", {}), **extra["env"]}
        options.update(extra)
    try:
        resolved = StageSettings.model_validate(settings)
    except ValidationError as exc:
        key, reason = _validation_message(exc)
        where = "settings" if not applied else f"overrides[{applied[-1]}].settings"
        raise MatrixError(path, f"{where}.{key}", reason) from None
    return resolved, gates, options


def _model_facts(name: str, m: ModelSpec, path: Path) -> ModelFacts:
    return ModelFacts(
        name=name,
        path=_resolve_model_path(path, m.path),
        hub_id=m.hub_id,
        architecture=m.architecture,
        moe=m.moe,
        num_experts=m.num_experts,
        num_attention_heads=m.num_attention_heads,
        num_kv_heads=m.num_kv_heads,
        served_name=m.served_name,
    )


def _resolve_model_path(matrix_path: Path, model_path: str | None) -> str | None:
    """Relative model paths are relative to the matrix file, so a matrix works from any cwd."""
    if model_path is None or Path(model_path).is_absolute():
        return model_path
    return str((matrix_path.parent / model_path).resolve())


def backend_reason(backend: str | None, cell: Cell) -> str | None:
    """A backend's own load-time refusal: on gaudi, a cell its serving stack cannot serve
    (issue 12; the rules live in harness/backends/gaudi/stacks.py)."""
    if backend == "cpu" or cell.device not in ("g2", "g3"):
        return None
    from harness.backends.gaudi.stacks import cell_reason

    return cell_reason(cell)


def invalid_reason(cell: Cell) -> str | None:
    """Why a cell cannot exist, or None. Checked at load so nothing expensive starts."""
    device = DEVICES.get(cell.device)
    if device is None:
        return _unknown("device", cell.device, DEVICES)
    if cell.quantization not in ("bf16", "fp8"):
        return f"quantization '{cell.quantization}' is not bf16 or fp8"
    if cell.kv_cache_dtype not in device.kv_cache_dtypes:
        return (
            f"kv_cache_dtype '{cell.kv_cache_dtype}' is unknown to {cell.device}; "
            f"use one of {', '.join(device.kv_cache_dtypes)}"
        )
    if cell.kv_cache_dtype != "auto" and cell.quantization == "bf16" and cell.device != "cpu":
        return "an FP8 KV cache (fp8_inc) needs quantization fp8 (INC scales)"
    if cell.tp > device.cards_per_node and cell.nodes == 1:
        return (
            f"TP={cell.tp} exceeds the {device.cards_per_node} cards of one {cell.device} node; "
            f"set nodes: {nodes_for(cell.tp, device.cards_per_node)} or lower tp"
        )
    cards = device.cards_per_node * cell.nodes
    if cell.world_size > cards:
        return (
            f"needs {cell.world_size} cards (TP x PP x EP/TP) but {cell.nodes} node(s) of "
            f"{cell.device} have {cards}"
        )
    m = cell.model
    if cell.ep > 1:
        if not m.moe or m.num_experts == 0:
            return (
                f"EP={cell.ep} on model '{m.name}' which has no experts (set moe and num_experts)"
            )
        if m.num_experts % cell.ep:
            return f"EP={cell.ep} does not divide the {m.num_experts} experts of '{m.name}'"
        if cell.ep % cell.tp and cell.tp % cell.ep:
            return f"EP={cell.ep} and TP={cell.tp} must divide one another"
    if m.moe and m.num_experts == 0:
        return f"model '{m.name}' is MoE but num_experts is not set"
    for what, heads in (("attention heads", m.num_attention_heads), ("KV heads", m.num_kv_heads)):
        if heads and heads % cell.tp and cell.tp % heads:
            return f"TP={cell.tp} does not divide the {heads} {what} of '{m.name}'"
    return None
