"""INC measure/quantize on CPU with TP/EP rank processes (torch.distributed, gloo).

The recipe mirrors calibrate_model.sh: the harness writes `maxabs_measure_<dev>.json` and
`maxabs_quant_<dev>.json` (the script's content plus what INC needs on CPU), then one worker per
rank (`python -m harness.calibration.worker`) runs steps 1-4 together. Derivations run the
measurement toolkit as step-5/3/6-style commands, then quantize the derived set at its own
layout so it ships with scale files like the calibration itself.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any
from typing import cast

from harness.backends.common import BackendCore
from harness.backends.contracts import CalibrationBackend
from harness.calibration import config as configs
from harness.calibration.layout import OutputLayout
from harness.calibration.recipe import CalibrationJob
from harness.calibration.recipe import Derivation
from harness.calibration.recipe import Recipe
from harness.calibration.recipe import Step
from harness.calibration.spec import MEASURE
from harness.calibration.spec import POSTPROCESS
from harness.calibration.spec import QUANTIZE
from harness.calibration.spec import WorkerSpec
from harness.cell import Cell
from harness.errors import HarnessError
from harness.fileio import replacing
from harness.process import Command

SYNTHETIC_SEED = 0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tool(*args: str | Path) -> tuple[str, ...]:
    return (sys.executable, "-m", "harness.calibration.tools", *(str(a) for a in args))


class CpuCalibration(BackendCore):
    """Stage mixin of the backend; see harness/backends/contracts.py for the contracts."""

    # what the calibration stage asks ------------------------------------------------------
    def calibration_device(self, cell: Cell) -> str:
        """The scales' target: the cell's device, or the Gaudi generation it emulates."""
        return cell.settings.calibration.target_device or cell.device

    def calibration_max_seq_len(self, cell: Cell) -> int | None:
        return cell.settings.calibration.max_seq_len

    def calibration_root(self, cell: Cell, cache_dir: Path) -> Path:
        """Where key entries live: settings' output_dir, else `<cache_dir>/calibration`."""
        out = cell.settings.calibration.output_dir
        return Path(out) if out else Path(cache_dir) / "calibration"

    def calibration_dataset(self, cell: Cell, cache_dir: Path,
                            materialize: bool = True) -> tuple[Path, str]:
        """(pickle, fingerprint): the matrix's dataset, or the miniature's synthetic set.

        The synthetic set is written on first use (`materialize`); its fingerprint covers the
        sample count, the seed and the generator's source, so a changed generator recalibrates.
        """
        s = cell.settings.calibration
        if s.dataset:
            path = Path(s.dataset)
            from harness.calibration.key import file_digest

            return path, file_digest(path) if path.is_file() else f"path:{path}"
        from harness import miniature

        h = hashlib.sha256()
        for src in sorted(Path(miniature.__file__).parent.glob("*.py")):
            h.update(src.read_bytes())
        generator = h.hexdigest()[:16]
        path = Path(cache_dir) / "calibration-data" / f"synthetic-{s.samples}-{generator}.pkl"
        if materialize and not path.is_file():
            with replacing(path) as tmp:
                miniature.write_calibration_pickle(tmp, s.samples, SYNTHETIC_SEED)
        return path, f"synthetic:n={s.samples}:seed={SYNTHETIC_SEED}:gen={generator}"

    def calibration_configs(self, job: CalibrationJob) -> tuple[dict[str, Any], dict[str, Any]]:
        return (
            configs.cpu_measure_config(job.out, job.model, job.device),
            configs.cpu_quant_config(job.out, job.model, job.device, job.scale_method),
        )

    # recipes -------------------------------------------------------------------------------
    def _ranks(
        self, job: CalibrationJob, spec: WorkerSpec, spec_path: Path, name: str, what: str
    ) -> Step:
        env = dict(job.env)
        env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                    "TRANSFORMERS_OFFLINE": "1", "MASTER_ADDR": "127.0.0.1",
                    "MASTER_PORT": str(spec.master_port), "WORLD_SIZE": str(spec.world),
                    "OMP_NUM_THREADS": str(spec.threads)})
        commands = tuple(
            Command(
                argv=(sys.executable, "-m", "harness.calibration.worker", "--spec",
                      str(spec_path), "--rank", str(r)),
                env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                description=f"rank {r}/{spec.world}: {what}",
            )
            for r in range(spec.world)
        )
        return Step(name, commands, parallel=True)

    def _spec(self, job: CalibrationJob, layout: OutputLayout, work: Path, tp: int, ep: int,
              world: int, steps: tuple[str, ...]) -> WorkerSpec:
        # one thread per rank: these ops are tiny and, on a shared 2-core box, torch's OpenMP
        # threads wait on each other (a 2-thread index_add_ measured 90x slower than 1 thread)
        cores = len(os.sched_getaffinity(0))
        if world > cores:
            raise HarnessError(
                f"{job.model}: {world} calibration ranks on a {cores}-core host; lower tp/ep "
                "(settings.calibration.calibrate_tp) or run on a bigger host"
            )
        return WorkerSpec(
            model_dir=job.source, model_name=job.model, tp=tp, ep=ep, world=world, steps=steps,
            measurement_dir=str(layout.measurement_dir), work_dir=str(work),
            measure_config=str(layout.measure_config), quant_config=str(layout.quant_config),
            dataset=str(job.dataset), samples=job.samples, max_seq_len=job.max_seq_len,
            master_port=_free_port(), threads=1,
            deepseek_postprocess=job.deepseek, timeout_s=job.timeout_s,
        )

    def calibration_recipe(self, job: CalibrationJob, derivation: Derivation | None) -> Recipe:
        """Steps 1-4 at the job's layout, one worker per rank (derivations run separately)."""
        layout = job.layout
        work = job.out / "work"
        spec = self._spec(job, layout, work, job.tp, job.ep, job.world,
                          (MEASURE, POSTPROCESS, QUANTIZE))
        spec_path = work / "spec.json"
        measure, quant = self.calibration_configs(job)
        step = self._ranks(job, spec, spec_path, "calibrate",
                           "measure, postprocess, quantize (calibrate_model.sh steps 1-4)")
        return Recipe(
            steps=(step,),
            measurement_dir=layout.measurement_dir,
            quant_config=layout.quant_config,
            world=job.world,
            writes={layout.measure_config: measure, layout.quant_config: quant,
                    spec_path: asdict(spec)},
            results=tuple(spec.result_path(r) for r in range(job.world)),
        )

    def derivation_recipe(self, job: CalibrationJob, d: Derivation) -> Recipe:
        """Unify (step 5), postprocess (3), expand (6) with the toolkit; quantize if expanded."""
        out = job.out / f"derived-{d.name}"
        layout = OutputLayout(out, job.model, job.device)
        final = layout.measurement_dir
        src = job.layout.measurement_dir
        steps: list[Step] = []
        if d.expand_world is None:
            flags = ["-u"] if d.expert_parallel else []
            steps.append(Step("unify", (Command(
                _tool("unify", "-m", src, "-o", final, "-r", str(d.unify_ranks), *flags),
                description=f"step 5: unify {job.world} ranks to {d.unify_ranks}"),)))
        else:
            cur = src
            if d.unify_ranks is not None:
                nxt = layout.model_dir / f"{job.device}-unified-tp1"
                flags = (["-u"] if d.expert_parallel else []) + (["-s"] if d.skip_scales else [])
                steps.append(Step("unify", (Command(
                    _tool("unify", "-m", cur, "-o", nxt, "-r", str(d.unify_ranks), *flags),
                    description=f"step 5: unify {job.world} ranks to 1"),)))
                cur = nxt
            if d.postprocess:
                nxt = cur.with_name(cur.name + "-post") if cur != src else (
                    layout.model_dir / f"{job.device}-post")
                flags = ["-d"] if job.deepseek else []
                steps.append(Step("postprocess", (Command(
                    _tool("postprocess", "-m", cur, "-o", nxt, *flags),
                    description="step 3: postprocess the unified set"),)))
                cur = nxt
            steps.append(Step("expand", (Command(
                _tool("expand", "-m", cur, "-o", final, "-w", str(d.expand_world)),
                description=f"step 6: expand to {d.expand_world} ranks"),)))
        _, quant = self.calibration_configs(dataclass_replace(job, out=out))
        writes: dict[Path, dict[str, Any]] = {layout.quant_config: quant}
        results: tuple[Path, ...] = ()
        if d.expand_world is not None:
            work = out / "work"
            spec = self._spec(job, layout, work, d.tp, d.ep, d.world, (QUANTIZE,))
            spec_path = work / "spec.json"
            steps.append(self._ranks(job, spec, spec_path, "quantize",
                                     "quantize the derived set (step 4)"))
            writes[spec_path] = asdict(spec)
            results = tuple(spec.result_path(r) for r in range(d.world))
        return Recipe(tuple(steps), final, layout.quant_config, d.world, writes,
                      results=results)

    def plan_calibration(self, cell: Cell, workdir: Path) -> list[Command]:
        from harness.calibration import service

        return service.plan_commands(cell, cast("CalibrationBackend", self), workdir)


def dataclass_replace(job: CalibrationJob, **changes: object) -> CalibrationJob:
    import dataclasses

    return dataclasses.replace(job, **changes)  # type: ignore[arg-type]  # (typed **changes)
