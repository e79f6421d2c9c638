"""Load-time checks of a matrix that pydantic's field types cannot express.

Include/exclude rules typed like the axes and naming known models, gates on metrics a selected
stage records with consistent bounds, models that say where their weights are, overrides that
reach a cell. Each problem is one MatrixError naming the file, the key and what to do, so a bad
matrix is refused before anything expensive starts (harness/matrix.py calls these).
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from typing import Literal

from pydantic import BaseModel
from pydantic import ConfigDict
from pydantic import Field
from pydantic import ValidationError

from harness.cell import STAGE_NAMES
from harness.errors import MatrixError
from harness.gates import GateSpec
from harness.matrix_files import unknown_name
from harness.matrix_files import validation_message
from harness.metrics_catalog import gate_problem


class Rule(BaseModel):
    """One include/exclude rule: each value typed like the entries of its axis."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    device: Literal["g2", "g3", "cpu"] | None = None
    tp: int | None = Field(default=None, ge=1)
    pp: int | None = Field(default=None, ge=1)
    ep: int | None = Field(default=None, ge=1)
    nodes: int | None = Field(default=None, ge=1)
    kv_cache_dtype: str | None = None
    quantization: Literal["bf16", "fp8"] | None = None


def check_rules(
    section: str,
    rules: Sequence[Mapping[str, Any]],
    path: Path,
    axis_names: Sequence[str],
    models: Iterable[str],
    kv_dtypes: Sequence[str],
) -> list[dict[str, Any]]:
    """The rules of `section` (include or exclude), validated, with their values as typed."""
    known_models = list(models)
    out: list[dict[str, Any]] = []
    for i, raw in enumerate(rules):
        where = f"{section}[{i}]"
        if not isinstance(raw, Mapping):
            raise MatrixError(path, where, f"a rule is a mapping of axis: value, got {raw!r}")
        for key in raw:
            if key not in axis_names:
                reason = unknown_name("axis", str(key), axis_names)
                raise MatrixError(path, f"{where}.{key}", reason)
        if section == "include" and "model" not in raw:
            raise MatrixError(path, where, "an include rule must name its model")
        try:
            rule = Rule.model_validate(raw).model_dump(exclude_unset=True)
        except ValidationError as exc:
            key, reason = validation_message(exc)
            if not reason.startswith("must be"):
                reason += "; a rule's values are single axis values, typed like the axis"
            raise MatrixError(path, f"{where}.{key}", reason) from None
        model = rule.get("model")
        if model is not None and model not in known_models:
            raise MatrixError(path, f"{where}.model", unknown_name("model", model, known_models))
        kv = rule.get("kv_cache_dtype")
        if kv is not None and kv not in kv_dtypes:
            raise MatrixError(
                path, f"{where}.kv_cache_dtype", unknown_name("kv_cache_dtype", kv, kv_dtypes)
            )
        if not rule:
            raise MatrixError(path, where, "an empty rule; name at least one axis value")
        out.append(rule)
    return out


def check_gates(
    gates: Mapping[str, GateSpec],
    path: Path,
    where: str,
    stages: Sequence[str],
    backend: str | None,
) -> None:
    """Gate keys are `<stage>.<metric>` of a selected stage that records the metric."""
    for key, spec in gates.items():
        stage, dot, metric = key.partition(".")
        if not dot or stage not in STAGE_NAMES or not metric:
            raise MatrixError(
                path,
                f"{where}.{key}",
                f"gate keys are '<stage>.<metric>' with stage one of {', '.join(STAGE_NAMES)}",
            )
        if stage not in stages:
            raise MatrixError(
                path,
                f"{where}.{key}",
                f"the matrix's stages ({', '.join(stages)}) do not include {stage}, so this "
                f"gate is never evaluated; add {stage} to stages or remove the gate",
            )
        problem = gate_problem(stage, metric, backend)
        if problem:
            raise MatrixError(path, f"{where}.{key}", problem)
        check_bounds(spec, path, f"{where}.{key}")


def check_bounds(spec: GateSpec, path: Path, where: str) -> None:
    """Bounds that some value can pass: min <= max, non-negative tolerance and drop."""
    for name in ("tolerance", "max_drop_vs_bf16"):
        value = getattr(spec, name)
        if value is not None and value < 0:
            raise MatrixError(path, f"{where}.{name}", f"{value:g} is negative; give a size >= 0")
    lower = spec.lower
    if lower is not None and spec.max is not None and lower > spec.max:
        what = "min" if spec.min is not None and spec.min == lower else "expected - tolerance"
        raise MatrixError(
            path,
            where,
            f"{what} ({lower:g}) is above max ({spec.max:g}): no value can pass; "
            "swap or fix the bounds",
        )


def check_model_sources(models: Mapping[str, Any], path: Path) -> None:
    """A model must say where its weights come from; its name is not a hub id."""
    for name, spec in models.items():
        if not spec.path and not spec.hub_id:
            raise MatrixError(
                path,
                f"models.{name}",
                "neither path nor hub_id is set; set path (a local checkpoint, relative to the "
                "matrix file) or hub_id (e.g. meta-llama/Llama-3.1-8B-Instruct)",
            )


def check_overrides_used(
    overrides: Sequence[Any], used: set[int], cell_ids: Sequence[str], path: Path
) -> None:
    """An override whose glob reaches no cell never applies (nor are its settings validated)."""
    for i, ov in enumerate(overrides):
        if i not in used:
            sample = ", ".join(cell_ids[:3]) + (", ..." if len(cell_ids) > 3 else "")
            raise MatrixError(
                path,
                f"overrides[{i}].cells",
                f"'{ov.cells}' matches no cell of the matrix (cells: {sample}); fix the glob "
                "(it is matched against whole cell ids, e.g. 'model/*') or remove the override",
            )


def check_stages(stages: Sequence[str], path: Path) -> None:
    """A stage listed twice would run twice under the same record."""
    seen: set[str] = set()
    for i, stage in enumerate(stages):
        if stage in seen:
            raise MatrixError(path, f"stages[{i}]", f"{stage} is listed twice; list it once")
        seen.add(stage)
