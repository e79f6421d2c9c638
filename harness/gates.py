"""Gate thresholds and their evaluation; every outcome names cell, metric, value and bound."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from enum import StrEnum

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
    # the metric's 95% interval must lie above this (vLLM's accuracy gate): `<name>_ci95_low`
    min_lower_bound: float | None = None
    # FP8 vs BF16: fail unless FP8 is shown no worse than max_drop (default: fail only when it
    # is shown worse by more than max_drop, paired per problem)
    require_non_inferiority: bool = False

    @model_validator(mode="after")
    def _one_bound_at_least(self) -> GateSpec:
        bounds = (self.min, self.max, self.expected, self.max_drop_vs_bf16, self.min_lower_bound)
        if all(v is None for v in bounds):
            raise ValueError("a gate needs min, max, expected, max_drop_vs_bf16 or min_lower_bound")
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


class GateStatus(StrEnum):
    """A gate passed, failed, or could not be evaluated (its reference is missing)."""

    PASSED = "passed"
    FAILED = "failed"
    UNKNOWN = "unknown"  # never a pass: a run with one is not QUALIFIED


@dataclass(frozen=True, slots=True)
class GateOutcome:
    """One gate applied to one metric value."""

    metric: str
    value: float
    passed: bool
    bound: str
    message: str
    status: GateStatus | None = None  # derived from `passed` unless UNKNOWN is given
    missing: str = ""  # UNKNOWN: which reference was missing and how to provide one
    reference: str = ""  # what the gate was judged against (e.g. "BF16 cell X of this run")
    details: Mapping[str, float | int | str] = field(default_factory=dict)  # figures it used

    def __post_init__(self) -> None:
        if self.status is None:
            derived = GateStatus.PASSED if self.passed else GateStatus.FAILED
            object.__setattr__(self, "status", derived)
        if self.status is GateStatus.UNKNOWN and self.passed:
            raise ValueError("an unknown gate is never a pass")

    @property
    def unknown(self) -> bool:
        return self.status is GateStatus.UNKNOWN

    @property
    def failed(self) -> bool:
        return self.status is GateStatus.FAILED

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "metric": self.metric,
            "value": self.value,
            "passed": self.passed,
            "status": str(self.status),
            "bound": self.bound,
            "message": self.message,
        }
        if self.missing:
            out["missing"] = self.missing
        if self.reference:
            out["reference"] = self.reference
        out.update(self.details)
        return out


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
    *,
    is_bf16: bool = False,
    bf16_missing: str = "",
    drop_judged: bool = False,
) -> list[GateOutcome]:
    """Apply every gate of `stage` to the stage's metrics; a gated metric that is absent fails.

    `max_drop_vs_bf16` does not apply to a BF16 cell (`is_bf16`: it is the reference); for any
    other cell without `bf16_metrics` it is UNKNOWN, with `bf16_missing` saying why; with
    `drop_judged` it is left to the caller (the accuracy stage's paired per-problem test)."""
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
        outcomes.extend(
            _check(
                cell_id, key, float(value), spec, bf16_metrics, name,
                is_bf16 or drop_judged, bf16_missing, _number(metrics.get(ci_low_name(name))),
            )
        )
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
    is_bf16: bool,
    bf16_missing: str,
    low: float | None = None,
) -> list[GateOutcome]:
    out = []
    lower = spec.lower
    if lower is not None:
        ok = value >= lower
        out.append(_outcome(cell_id, key, value, ok, f">= {lower:g}"))
    if spec.max is not None:
        ok = value <= spec.max
        out.append(_outcome(cell_id, key, value, ok, f"<= {spec.max:g}"))
    if spec.min_lower_bound is not None:
        out.append(_lower_bound(cell_id, key, value, spec.min_lower_bound, low, name))
    if spec.max_drop_vs_bf16 is not None and not is_bf16:
        if bf16 is None or name not in bf16:
            missing = bf16_missing or "the BF16 twin's result"
            out.append(
                GateOutcome(
                    key,
                    value,
                    False,
                    "vs bf16",
                    f"{cell_id}: {key}: UNKNOWN, not evaluated: no BF16 reference ({missing})",
                    GateStatus.UNKNOWN,
                    missing,
                )
            )
        else:
            floor = bf16[name] - spec.max_drop_vs_bf16
            ok = value >= floor
            bound = f">= bf16 {bf16[name]:g} - {spec.max_drop_vs_bf16:g}"
            out.append(_outcome(cell_id, key, value, ok, bound))
    return out


def _lower_bound(
    cell_id: str, key: str, value: float, floor: float, low: float | None, name: str
) -> GateOutcome:
    """The 95% interval's low end (recorded as `<name>_ci95_low`) must reach `floor`."""
    bound = f"CI low >= {floor:g}"
    if low is None:
        return GateOutcome(
            key, value, False, bound,
            f"{cell_id}: {key}: UNKNOWN, not evaluated: no 95% interval recorded",
            GateStatus.UNKNOWN, f"{name}_ci95_low was not recorded (the stage records n for it)",
        )
    verdict = "ok" if low >= floor else "FAILED"
    return GateOutcome(
        key, value, low >= floor, bound,
        f"{cell_id}: {key} = {value:g}, 95% CI low {low:g} (gate {bound}) {verdict}",
    )


def ci_low_name(name: str) -> str:
    """Where a metric's 95% interval low end is recorded: `x_ci95_low`, `x_ci95_low@c32`."""
    base, at, suffix = name.partition("@")
    return f"{base}_ci95_low{at}{suffix}"


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _outcome(cell_id: str, key: str, value: float, ok: bool, bound: str) -> GateOutcome:
    verdict = "ok" if ok else "FAILED"
    return GateOutcome(
        key, value, ok, bound, f"{cell_id}: {key} = {value:g} (gate {bound}) {verdict}"
    )
