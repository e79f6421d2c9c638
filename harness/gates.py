"""Gate thresholds and their evaluation; every outcome names cell, metric, value and bound."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import BaseModel
from pydantic import ConfigDict
from pydantic import model_validator


class GateSpec(BaseModel):
    """Bounds on one metric; `expected`/`tolerance` is one-sided: >= expected - tolerance."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min: float | None = None
    max: float | None = None
    expected: float | None = None
    tolerance: float | None = None
    max_drop_vs_bf16: float | None = None  # FP8 cell >= BF16 cell of same model/device - this

    @model_validator(mode="after")
    def _one_bound_at_least(self) -> GateSpec:
        if all(v is None for v in (self.min, self.max, self.expected, self.max_drop_vs_bf16)):
            raise ValueError("a gate needs min, max, expected or max_drop_vs_bf16")
        if self.tolerance is not None and self.expected is None:
            raise ValueError("tolerance needs expected")
        return self

    @property
    def lower(self) -> float | None:
        """The effective lower bound: the larger of min and expected - tolerance."""
        bounds = [b for b in (self.min, self._expected_floor) if b is not None]
        return max(bounds) if bounds else None

    @property
    def _expected_floor(self) -> float | None:
        if self.expected is None:
            return None
        return self.expected - (self.tolerance or 0.0)


def merge_gates(base: Mapping[str, GateSpec], extra: Mapping[str, GateSpec]) -> dict[str, GateSpec]:
    """Overrides replace the fields they set and keep the rest of the base gate."""
    merged = dict(base)
    for key, spec in extra.items():
        if key in merged:
            fields = {
                **merged[key].model_dump(exclude_none=True),
                **spec.model_dump(exclude_none=True),
            }
            merged[key] = GateSpec(**fields)
        else:
            merged[key] = spec
    return merged


@dataclass(frozen=True, slots=True)
class GateOutcome:
    """One gate applied to one metric value."""

    metric: str
    value: float
    passed: bool
    bound: str
    message: str

    def as_dict(self) -> dict[str, object]:
        return {
            "metric": self.metric,
            "value": self.value,
            "passed": self.passed,
            "bound": self.bound,
            "message": self.message,
        }


def gate_for(metric: str, gates: Mapping[str, GateSpec]) -> GateSpec | None:
    """Exact key first; `name@c32`-style metrics fall back to the gate on `name`."""
    if metric in gates:
        return gates[metric]
    base = metric.split("@", 1)[0]
    return gates.get(base)


def evaluate(
    cell_id: str,
    stage: str,
    metrics: Mapping[str, float],
    gates: Mapping[str, GateSpec],
    bf16_metrics: Mapping[str, float] | None = None,
) -> list[GateOutcome]:
    """Apply every gate of `stage` to the stage's metrics; a gated metric that is absent fails."""
    outcomes: list[GateOutcome] = []
    prefix = f"{stage}."
    gated = {k for k in gates if k.startswith(prefix)}
    covered: set[str] = set()
    for name, value in metrics.items():
        key = prefix + name
        spec = gate_for(key, gates)
        if spec is None or not isinstance(value, int | float):
            continue
        covered.add(key if key in gates else key.split("@", 1)[0])
        outcomes.extend(_check(cell_id, key, float(value), spec, bf16_metrics, name))
    for missing in sorted(gated - covered):
        outcomes.append(
            GateOutcome(
                missing, float("nan"), False, "present", f"{cell_id}: {missing} was not measured"
            )
        )
    return outcomes


def _check(
    cell_id: str,
    key: str,
    value: float,
    spec: GateSpec,
    bf16: Mapping[str, float] | None,
    name: str,
) -> list[GateOutcome]:
    out = []
    lower = spec.lower
    if lower is not None:
        ok = value >= lower
        out.append(_outcome(cell_id, key, value, ok, f">= {lower:g}"))
    if spec.max is not None:
        ok = value <= spec.max
        out.append(_outcome(cell_id, key, value, ok, f"<= {spec.max:g}"))
    if spec.max_drop_vs_bf16 is not None:
        if bf16 is None or name not in bf16:
            out.append(
                GateOutcome(
                    key, value, True, "vs bf16", f"{cell_id}: {key}: no BF16 cell to compare"
                )
            )
        else:
            floor = bf16[name] - spec.max_drop_vs_bf16
            ok = value >= floor
            bound = f">= bf16 {bf16[name]:g} - {spec.max_drop_vs_bf16:g}"
            out.append(_outcome(cell_id, key, value, ok, bound))
    return out


def _outcome(cell_id: str, key: str, value: float, ok: bool, bound: str) -> GateOutcome:
    verdict = "ok" if ok else "FAILED"
    return GateOutcome(
        key, value, ok, bound, f"{cell_id}: {key} = {value:g} (gate {bound}) {verdict}"
    )
