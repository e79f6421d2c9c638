"""Calibration stage: measure -> postprocess -> quantize once per key, then unify/expand per cell.

`ensure(backend, cell, cache_dir)` is what the cell's resources (harness/cell_resources.py)
call: it returns the cell's `CalibrationArtifacts` (see harness/calibration/artifacts.py for how
to serve with them), or None for a BF16 cell. The calibration itself is cached under
`<cache_dir>/calibration/` by key (model, device, dataset, samples, measure/quant config, the
TP/EP it ran at), under a file lock, so it runs once across cells, xdist workers and runs.
`run(ctx, calibration)` records the stage's figures and checks the set with the measurement
toolkit.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from harness.backends.contracts import Backend
from harness.calibration.artifacts import CalibrationArtifacts
from harness.calibration.key import InvalidEntry
from harness.cell import Cell
from harness.cell import Stage
from harness.devices import GAUDI_DEVICES
from harness.errors import HarnessError
from harness.errors import StageError
from harness.fileio import write_atomic
from harness.stages.base import StageContext
from harness.stages.base import StageSkipped

# seconds `ensure` spent on each cell in this process (0 when the cache already had it)
_ENSURE_S: dict[str, float] = {}


def ensure(
    backend: Backend, cell: Cell, cache_dir: Path, recalibrate_invalid: bool = False
) -> CalibrationArtifacts | None:
    """Calibration artifacts for `cell` (computed once per key); None for a BF16 cell. A corrupt
    cache entry fails naming the file (or is calibrated again with `recalibrate_invalid`)."""
    if not cell.is_fp8:
        return None
    reason = backend.skip_reason(cell, Stage.CALIBRATION)
    if reason:
        raise StageSkipped(reason)
    from harness.calibration import service

    t0 = time.monotonic()
    try:
        artifacts = service.ensure(cell, backend, cache_dir, recalibrate_invalid)
    except InvalidEntry as exc:  # its message names the file and the fix already
        raise StageError(cell.id, Stage.CALIBRATION.value, str(exc)) from None
    except HarnessError as exc:
        if isinstance(exc, StageError | StageSkipped):
            raise
        raise StageError(
            cell.id, Stage.CALIBRATION.value, str(exc),
            "the logs named above hold each rank's output; fix the cause and re-run (a failed "
            "calibration is never cached)",
        ) from None
    _ENSURE_S[cell.id] = round(time.monotonic() - t0, 3)
    return artifacts


def run(ctx: StageContext, calibration: CalibrationArtifacts | None) -> None:
    """Record what the calibration produced and check the set the cell will serve with."""
    if calibration is None:
        raise StageSkipped("a BF16 cell has nothing to calibrate")
    from harness.calibration import key as keys
    from harness.calibration.summary import summarize

    rec = ctx.recorder
    a = calibration
    done = keys.read_done(a.cache_entry) or {}
    derived_info = done.get("derived", {}).get(f"tp{a.tp}-ep{a.ep}", {}) if a.derived else {}
    rec.update({
        "time_s": round(float(done.get("calibration_s", 0.0)) + float(
            derived_info.get("derive_s", 0.0)), 3),
        "calibration_s": done.get("calibration_s"),
        "derive_s": derived_info.get("derive_s", 0.0) if a.derived else 0.0,
        "ensure_s": _ENSURE_S.get(ctx.cell.id, 0.0),
        "derived": a.derived,
        "world": a.world,
        "calibrated_world": a.calibrated_world,
        "scale_files": len(a.scale_files),
    })
    ranks = list(done.get("ranks", [])) + list(derived_info.get("ranks", []))
    errs = [r["qdq_rel_err"] for r in ranks if "qdq_rel_err" in r]
    if errs:
        rec.metric("qdq_rel_err", round(max(errs), 5))
    if not a.range_files or len(a.range_files) != a.world:
        raise StageError(ctx.cell.id, "calibration",
                         f"{a.measurement_dir}: expected {a.world} range files, found "
                         f"{len(a.range_files)}", "delete the cache entry and re-run")
    rec.update(summarize(list(a.range_files), ctx.cell.model.num_experts).as_metrics())
    report = _check(a)
    rec.metric("check_ok", report.ok)
    rec.metric("check_warnings", len(report.warnings))
    out = ctx.workdir / "calibration.json"
    write_atomic(out, json.dumps({"artifacts": a.as_dict(), "check": report.to_dict()}, indent=2))
    rec.artifact("calibration", out)
    rec.artifact("quant_config", a.quant_config)
    if not report.ok:
        raise StageError(ctx.cell.id, "calibration", report.render(),
                         f"inspect {a.measurement_dir}; delete {a.cache_entry} to recalibrate")
    experts = ctx.cell.model.num_experts
    if ctx.cell.model.moe and rec.metrics.get("experts_covered") != experts:
        raise StageError(ctx.cell.id, "calibration",
                         f"{rec.metrics.get('experts_covered')} of {experts} experts are in "
                         f"the set at {a.measurement_dir}", "check the unify/expand steps")
    ctx.check_gates()


def _check(a: CalibrationArtifacts) -> Any:
    from harness.measurements import check

    device = a.device if a.device in GAUDI_DEVICES else None
    return check(a.measurement_dir, device=device, world=a.world)
