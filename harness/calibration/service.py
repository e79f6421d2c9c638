"""Calibrate once, derive many: plan a cell's calibration, run it once per key, derive its set.

`ensure(cell, backend, cache_dir)` returns the cell's `CalibrationArtifacts`. Under a file lock
per key it (1) runs the backend's calibration recipe unless the key's entry is complete
(`done.json`), then (2) runs the derivation recipe unless this derived layout is recorded in
`done.json`. Backends only build recipes; nothing here knows which backend it talks to.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.backends.contracts import CalibrationBackend
from harness.calibration import key as keys
from harness.calibration import planner
from harness.calibration.artifacts import CalibrationArtifacts
from harness.calibration.config import model_dir_name
from harness.calibration.config import without_paths
from harness.calibration.layout import range_files
from harness.calibration.layout import scale_files
from harness.calibration.recipe import CalibrationJob
from harness.calibration.recipe import Derivation
from harness.calibration.recipe import Recipe
from harness.calibration.recipe import StepFailed
from harness.calibration.recipe import run_recipe
from harness.cell import Cell
from harness.errors import HarnessError
from harness.process import Command


@dataclass(frozen=True)
class Plan:
    """A cell's calibration: the job (at its key's entry), the key, and the derivation."""

    job: CalibrationJob
    key: keys.CalibrationKey
    entry: Path
    derivation: Derivation | None


def plan(
    cell: Cell, backend: CalibrationBackend, cache_dir: Path, materialize: bool = True
) -> Plan:
    """Resolve the job, key and derivation of `cell` (`materialize`: write a generated dataset)."""
    s = cell.settings.calibration
    tp, ep = planner.calibrate_layout(cell)
    derivation = planner.derivation(cell)
    dataset, dataset_id = backend.calibration_dataset(cell, cache_dir, materialize)
    job = CalibrationJob(
        model=model_dir_name(cell.model.source),
        source=cell.model.source,
        architecture=cell.model.architecture,
        moe=cell.model.moe,
        num_experts=cell.model.num_experts,
        device=backend.calibration_device(cell),
        tp=tp,
        ep=ep,
        dataset=dataset,
        samples=s.samples,
        batch_size=s.batch_size,
        out=Path("."),
        max_seq_len=backend.calibration_max_seq_len(cell),
        scale_method=s.scale_method,
        enforce_eager=s.enforce_eager,
        timeout_s=s.timeout_s,
        scripts_dir=s.scripts_dir,
        quant_config_buffer=s.quant_config_buffer,
        env=tuple(sorted(backend.extra_env(cell).items())),
        **(backend.calibration_stack(cell) if hasattr(backend, "calibration_stack") else {}),
    )
    measure_cfg, quant_cfg = backend.calibration_configs(job)
    key = keys.CalibrationKey(
        model=job.model,
        model_fingerprint=keys.model_fingerprint(job.source),
        device=job.device,
        dataset=dataset_id,
        samples=job.samples,
        max_seq_len=job.max_seq_len,
        measure_config=keys.canonical(without_paths(measure_cfg)),
        quant_config=keys.canonical(without_paths(quant_cfg)),
        tp=tp,
        ep=ep,
        backend=backend.name,
    )
    entry = backend.calibration_root(cell, cache_dir) / key.dirname
    job = dataclasses.replace(job, out=entry)
    return Plan(job, key, entry, derivation)


def ensure(
    cell: Cell, backend: CalibrationBackend, cache_dir: Path, recalibrate_invalid: bool = False
) -> CalibrationArtifacts:
    """The cell's artifacts, computing the calibration and its derived set at most once.

    The set about to be served is checked first (a corrupt cache entry is refused naming the
    file, or recalibrated with `recalibrate_invalid`), also when the calibration stage is not
    selected and nothing else would look at it."""
    p = plan(cell, backend, cache_dir)
    lock = p.entry.with_name(p.entry.name + ".lock")
    with keys.locked(lock, cell.settings.calibration.timeout_s):
        done = _complete(p, backend, keys.read_done(p.entry))
        problem = _served_problem(p, backend)
        if problem is not None and recalibrate_invalid:
            shutil.rmtree(p.entry)
            done = _complete(p, backend, None)
            problem = _served_problem(p, backend)
        if problem is not None:
            raise problem
    return artifacts(cell, backend, p, done)


def _complete(p: Plan, backend: Any, done: dict[str, Any] | None) -> dict[str, Any]:
    if done is None:
        done = _calibrate(p, backend)
    if p.derivation is not None and p.derivation.name not in done.get("derived", {}):
        done = _derive(p, backend, done)
    return done


def _served_problem(p: Plan, backend: Any) -> keys.InvalidEntry | None:
    served = _served_recipe(backend, p)
    device = p.job.device if p.job.device in ("g2", "g3") else None
    return keys.entry_problem(
        p.entry, served.quant_config, served.measurement_dir, served.world, device
    )


def _fail(p: Plan, exc: Exception) -> HarnessError:
    return HarnessError(
        f"calibration of {p.job.model} at tp{p.job.tp}/ep{p.job.ep} failed in {exc}\n"
        f"  logs: {p.entry / 'logs'}"
    )


def _calibrate(p: Plan, backend: CalibrationBackend) -> dict[str, Any]:
    source = Path(p.job.source)
    if source.is_absolute() and not source.exists():
        raise HarnessError(
            f"{source}: model directory not found (for the miniatures: build them with the "
            "set-up, `make setup`; otherwise fix the model path in the matrix)"
        )
    named = getattr(backend, "dataset_by_name", None)
    if not p.job.dataset.is_file() and not (named is not None and named(p.job.dataset)):
        raise HarnessError(
            f"{p.job.dataset}: calibration dataset not found (settings.calibration.dataset)"
        )
    if p.entry.exists():  # an interrupted attempt: never measure into old files
        shutil.rmtree(p.entry)
    p.entry.mkdir(parents=True)
    keys.write_json(p.entry / "key.json", p.key.as_dict())
    recipe = backend.calibration_recipe(p.job, p.derivation)
    t0 = time.monotonic()
    try:
        times = run_recipe(recipe, p.entry / "logs", p.job.timeout_s)
    except StepFailed as exc:
        raise _fail(p, exc) from None
    done: dict[str, Any] = {
        "key": p.key.digest,
        "calibration_s": round(time.monotonic() - t0, 3),
        "steps_s": times,
        "ranks": _rank_results(recipe),
        "derived": {},
    }
    if recipe.derivation is not None:
        done["derived"][recipe.derivation] = {"fused": True, "derive_s": 0.0}
    keys.write_json(p.entry / keys.DONE, done)
    return done


def _derive(p: Plan, backend: CalibrationBackend, done: dict[str, Any]) -> dict[str, Any]:
    assert p.derivation is not None
    recipe = backend.derivation_recipe(p.job, p.derivation)
    t0 = time.monotonic()
    try:
        times = run_recipe(recipe, p.entry / "logs" / p.derivation.name, p.job.timeout_s)
    except StepFailed as exc:
        raise _fail(p, exc) from None
    done = json.loads(json.dumps(done))
    done.setdefault("derived", {})[p.derivation.name] = {
        "fused": False,
        "derive_s": round(time.monotonic() - t0, 3),
        "steps_s": times,
        "ranks": _rank_results(recipe),
    }
    keys.write_json(p.entry / keys.DONE, done)
    return done


def _rank_results(recipe: Recipe) -> list[dict[str, Any]]:
    out = []
    for path in recipe.results:
        try:
            out.append(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError):
            out.append({"missing": str(path)})
    return out


def artifacts(
    cell: Cell, backend: CalibrationBackend, p: Plan, done: dict[str, Any]
) -> CalibrationArtifacts:
    """Describe the files the cell serves with (the derived set, or the calibration itself)."""
    base = backend.calibration_recipe(p.job, None)
    served = _served_recipe(backend, p)
    cfg = json.loads(served.quant_config.read_text(encoding="utf-8"))
    tp, ep = (p.job.tp, p.job.ep) if p.derivation is None else (p.derivation.tp,
                                                                 p.derivation.ep)
    return CalibrationArtifacts(
        cell_id=cell.id,
        model=p.job.model,
        device=p.job.device,
        backend=backend.name,
        quant_config=served.quant_config,
        measure_config=p.job.layout.measure_config,
        measurement_dir=served.measurement_dir,
        dump_stats_path=Path(cfg["dump_stats_path"]),
        tp=tp,
        ep=ep,
        world=served.world,
        range_files=tuple(range_files(served.measurement_dir, served.world)),
        scale_files=tuple(scale_files(served.measurement_dir, served.world)),
        scale_method=str(cfg.get("scale_method", "")),
        device_for_scales=cfg.get("device_for_scales"),
        use_qdq=bool(cfg.get("use_qdq", False)),
        key=p.key.digest,
        cache_entry=p.entry,
        calibrated_tp=p.job.tp,
        calibrated_ep=p.job.ep,
        calibrated_world=p.job.world,
        source_dir=base.measurement_dir,
        derived=p.derivation is not None,
        derivation=p.derivation.steps if p.derivation else (),
    )


def plan_commands(cell: Cell, backend: CalibrationBackend, workdir: Path) -> list[Command]:
    """The commands `ensure` would run for `cell`: the calibration, then its derivation unless
    the calibration recipe already does it (calibrate_model.sh -r). A cell that cannot be
    calibrated shows why, as `false` with the message the stage fails with."""
    if not cell.is_fp8:
        return []
    try:
        p = plan(cell, backend, _plan_cache(backend, workdir), materialize=False)
        recipe = backend.calibration_recipe(p.job, p.derivation)
        commands = recipe.commands()
        if p.derivation is not None and recipe.derivation != p.derivation.name:
            commands += backend.derivation_recipe(p.job, p.derivation).commands()
    except HarnessError as exc:
        return [Command(("false",), description=f"calibration cannot run: {exc}")]
    return commands


def planned_quant_config(cell: Cell, backend: CalibrationBackend, workdir: Path) -> Path | None:
    """The QUANT_CONFIG the calibration stage will leave for `cell` (for --plan), or None when
    the cell cannot be calibrated (plan_commands shows why)."""
    try:
        p = plan(cell, backend, _plan_cache(backend, workdir), materialize=False)
        return _served_recipe(backend, p).quant_config
    except HarnessError:
        return None


def _served_recipe(backend: CalibrationBackend, p: Plan) -> Recipe:
    """The recipe whose set the cell serves: its derivation's, else the calibration's own."""
    if p.derivation is None:
        return backend.calibration_recipe(p.job, None)
    return backend.derivation_recipe(p.job, p.derivation)


def _plan_cache(backend: CalibrationBackend, workdir: Path) -> Path:
    return Path(backend.options.get("cache_dir") or Path(workdir) / "cache")
