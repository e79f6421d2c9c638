"""Calibrate_model.sh and the step-3/5/6 tools as in the seeds.

Single node: `./calibrate_model.sh -m -d -o -b -l -t [-r] [-u] [-e]` in vllm-gaudi's
`calibration/` (seed 002). It writes `<out>/<model>/maxabs_{measure,quant}_<dev>.json`, exports
QUANT_CONFIG itself, runs steps 1-4, and with `-r` unifies in place (seed 000 step 7).

Multi-node (TP > 8, seeds 000/001): first ask Ray how many HPUs the cluster has (the script's
own one-liner), create the empty QUANT_CONFIG buffer file on NFS, and run the script with
`QUANT_CONFIG=<buffer>` and `PT_HPU_ENABLE_LAZY_COLLECTIVES=true` (plus seed 001's
`EXPERIMENTAL_WEIGHT_SHARING=0`, `VLLM_SKIP_WARMUP=true`): the script then writes the measure,
later the quant, config into the buffer for every node to read.

MoE expert parallelism (seed 000, "Advanced Usage for MoE Models"): calibrate with `-u`, then
`step-5-unify_measurements.py -r 1 -u -s` into `<dev>-unified-tp1/`, `step-3 -d` (DeepSeek)
into `-post/`, `step-6-expand-measurements.py -w N` into `-expand-epN`, and a copy of the quant
config whose `dump_stats_path` points there (seed 001: "edit the QUANT_CONFIG file").
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from typing import cast

from harness.backends.common import BackendCore
from harness.backends.contracts import CalibrationBackend
from harness.backends.gaudi import fork_calibration
from harness.backends.gaudi import measurement_source
from harness.backends.gaudi import stacks
from harness.backends.gaudi.discovery import CARDS_PER_NODE
from harness.backends.gaudi.stack_checks import samples_note
from harness.calibration import config as configs
from harness.calibration.key import file_digest
from harness.calibration.recipe import CalibrationJob
from harness.calibration.recipe import Derivation
from harness.calibration.recipe import Recipe
from harness.calibration.recipe import Step
from harness.cell import Cell
from harness.errors import HarnessError
from harness.process import Command

VLLM_FORK_DIR = "/workspace/vllm-fork"  # seed 003's source folder

RAY_HPU_CHECK = 'import ray; ray.init(); print(int(ray.available_resources()["HPU"]))'
MULTI_NODE_ENV = {
    "PT_HPU_ENABLE_LAZY_COLLECTIVES": "true",
    "EXPERIMENTAL_WEIGHT_SHARING": "0",
    "VLLM_SKIP_WARMUP": "true",
}


def parse_ray_hpus(output: str) -> int | None:
    """The HPU count the Ray one-liner printed (its last integer line), None if absent."""
    for line in reversed(output.strip().splitlines()):
        if re.fullmatch(r"\s*\d+\s*", line):
            return int(line)
    return None


# calibrate_model.sh's getopts: "...r:ue" since vllm-gaudi 9e77a155 (#1121, 2026-03-11, in
# v0.14.1+ but not v0.17.0rc1/v0.17.1rc1); "...r:u:e" before (v0.11.2-v0.13.0.post1), where a
# bare -u swallows the next option and `case u` ignores its value (v0.13.0 lines 120-122)
U_NOTES: dict[str | None, str] = {
    "value": "this checkout's calibrate_model.sh reads `-u <value>` (getopts u:), so -u 1",
    None: "calibrate_model.sh not readable here: bare -u needs its getopts \"...r:ue\" "
    "(vllm-gaudi 9e77a155, v0.14.1+); an older checkout takes `-u <value>`",
}


def u_option_form(scripts: Path) -> str | None:
    """"flag" or "value" from the checkout's getopts string; None when it is not readable."""
    try:
        text = (scripts / "calibrate_model.sh").read_text(encoding="utf-8")
    except OSError:
        return None
    match = re.search(r'getopts\s+"([^"]*)"', text)
    if match is None:
        return None
    return "value" if "u:" in match.group(1) else "flag"


def _dir(path: Path) -> str:
    """Directories as the seeds write them: with a trailing slash."""
    return str(path).rstrip("/") + "/"


class GaudiCalibration(BackendCore):
    """Stage mixin of the backend; see harness/backends/contracts.py for the contracts."""

    # what the calibration stage asks ------------------------------------------------------
    def calibration_device(self, cell: Cell) -> str:
        target = cell.settings.calibration.target_device
        if target and target != cell.device:
            raise HarnessError(
                f"{cell.id}: settings.calibration.target_device={target} on a {cell.device} "
                "cell; Gaudi scales are measured on the device they serve on (drop it)"
            )
        return cell.device

    def calibration_max_seq_len(self, cell: Cell) -> int | None:
        return None  # the script's own (step-2 --max-model-len)

    def calibration_root(self, cell: Cell, cache_dir: Path) -> Path:
        """Where key entries live: settings' output_dir, else `<cache_dir>/calibration`."""
        out = cell.settings.calibration.output_dir
        return Path(out) if out else Path(cache_dir) / "calibration"

    def calibration_dataset(self, cell: Cell, cache_dir: Path,
                            materialize: bool = True) -> tuple[Path, str]:
        source = cell.settings.calibration.source
        if source:  # the set itself is the data; its folder names it in the key
            return Path(source), f"source:{source}"
        if stacks.profile(cell).name == "vllm-fork":  # run_inc_calib.sh:97 --dataset pile
            return Path("pile"), "run_inc_calib.sh: pile (fixed by the script)"
        dataset = cell.settings.calibration.dataset
        if not dataset:
            raise HarnessError(
                f"{cell.id}: settings.calibration.dataset is required on Gaudi: a .pkl with "
                "system_prompt and question columns (e.g. MLCommons' "
                "open_orca_gpt4_tokenized_llama.calibration_1000.pkl)"
            )
        path = Path(dataset)
        return path, file_digest(path) if path.is_file() else f"path:{path}"

    def calibration_stack(self, cell: Cell) -> dict[str, Any]:
        """The stack whose procedure measures the cell (CalibrationJob.stack/fork_dir)."""
        stack = stacks.profile(cell).name
        fork = str(self.option(cell, "vllm_fork_dir", VLLM_FORK_DIR))
        return {"stack": stack, "fork_dir": fork if stack == "vllm-fork" else None,
                "source_set": cell.settings.calibration.source}

    def dataset_by_name(self, dataset: Path) -> bool:
        """calibrate_model.sh:217-222: a dataset not ending in .pkl is prepared by name (a
        pre-made set is checked by its recipe's first step instead)."""
        return not str(dataset).endswith(".pkl")

    def calibration_configs(self, job: CalibrationJob) -> tuple[dict[str, Any], dict[str, Any]]:
        """What the script will write (for the key); a branch we cannot predict is named."""
        if job.source_set:
            return {"source": job.source_set}, {"source": job.source_set, "stack": job.stack}
        if job.stack == "vllm-fork":
            return dict(fork_calibration.MEASURE_KEY), dict(fork_calibration.QUANT_KEY)
        rule = configs.rule_for(job.model)
        if not rule.verified:
            marker = {"calibrate_model.sh branch": rule.family}
            return marker, marker
        return (configs.measure_config(job.out, job.model, job.device),
                configs.quant_config(job.out, job.model, job.device))

    # recipes -------------------------------------------------------------------------------
    def _scripts(self, job: CalibrationJob) -> Path:
        """The vllm-gaudi calibration folder, absolute (commands run there; env paths too)."""
        return Path(job.scripts_dir or "vllm-gaudi/calibration").absolute()

    def _python(self, job: CalibrationJob, script: str, *args: str,
                description: str) -> Command:
        scripts = self._scripts(job)
        return Command(("python3", script, *args), description=description,
                       cwd=str(scripts), node=0 if job.tp > CARDS_PER_NODE else None)

    def calibration_recipe(self, job: CalibrationJob, derivation: Derivation | None) -> Recipe:
        """Calibrate_model.sh, with `-r` when the cell only needs a unify (seed 000 step 7);
        the fork's run_inc_calib.sh for a vllm-fork cell (seed 003)."""
        if job.source_set:
            if job.stack == "vllm-fork" and derivation is not None:
                fork_calibration.recipe(job, derivation)  # raises: no unify/expand on the fork
            return measurement_source.recipe(job, job.source_set)
        if job.stack == "vllm-fork":
            return fork_calibration.recipe(job, derivation)
        multi_node = job.tp > CARDS_PER_NODE
        scripts = self._scripts(job)
        env = dict(job.env)
        node = 0 if multi_node else None
        steps: list[Step] = []
        if multi_node:
            buffer = Path(job.quant_config_buffer or scripts / "quant_config_buffer.json")
            need = job.world

            def enough_hpus(output: str, need: int = need) -> str | None:
                found = parse_ray_hpus(output)
                if found is None or found < need:
                    return (f"Ray reports {found} HPUs but calibrating at TP{job.tp} needs "
                            f"{need}: start Ray on every node (ray start --address=<head>:6379) "
                            "and check `ray status`")
                return None

            steps.append(Step("ray-hpus", (Command(
                ("python3", "-c", RAY_HPU_CHECK), env=env, node=0,
                description=f"multi-node: Ray must see {need} HPUs (calibrate_model.sh check)"),),
                check=enough_hpus))
            steps.append(Step("quant-config-buffer", (Command(
                ("touch", str(buffer)), node=0,
                description="multi-node: the empty QUANT_CONFIG buffer file on NFS (seed 000)"),)))
            env.update({**MULTI_NODE_ENV, "QUANT_CONFIG": str(buffer)})
        argv = ["./calibrate_model.sh", "-m", job.source, "-d", str(job.dataset),
                "-o", str(job.out), "-b", str(job.batch_size), "-l", str(job.samples),
                "-t", str(job.tp)]
        fused = derivation is not None and derivation.expand_world is None
        if fused:
            assert derivation is not None
            argv += ["-r", str(derivation.unify_ranks)]
        notes = [samples_note(str(job.dataset), job.samples)]
        if job.ep > 1 or (fused and derivation is not None and derivation.expert_parallel):
            form = u_option_form(scripts)
            argv += ["-u", "1"] if form == "value" else ["-u"]
            notes.append(U_NOTES.get(form))
        if job.enforce_eager:
            argv.append("-e")
        note = "; ".join(n for n in notes if n)
        steps.append(Step("calibrate_model.sh", (Command(
            tuple(argv), env=env, cwd=str(scripts), node=node,
            description="calibrate_model.sh: prepare, measure, postprocess, quantize"
            + (f", unify to {derivation.unify_ranks}" if fused and derivation else "")
            + (f"; WARNING {note}" if note else "")),)))
        layout = job.layout
        return Recipe(tuple(steps), layout.measurement_dir, layout.quant_config, job.world,
                      derivation=derivation.name if fused and derivation else None)

    def derivation_recipe(self, job: CalibrationJob, d: Derivation) -> Recipe:
        """Step 5 in place (unify), or steps 5 -> 3 -> 6 into the seed's folders (expand)."""
        layout = job.layout
        src = layout.measurement_dir
        if d.expand_world is None:
            args = ["-r", str(d.unify_ranks), "-m", _dir(src), "-o", _dir(src)]
            if d.expert_parallel:
                args.append("-u")
            step = Step("unify", (self._python(
                job, "step-5-unify_measurements.py", *args,
                description=f"step 5: unify {job.world} ranks to {d.unify_ranks} in place"),))
            return Recipe((step,), src, layout.quant_config, d.world)
        steps: list[Step] = []
        cur = src
        name = job.device
        if d.unify_ranks is not None:
            name += "-unified-tp1"
            nxt = layout.model_dir / name
            args = ["-m", _dir(cur), "-r", "1", "-o", _dir(nxt)]
            args += (["-u"] if d.expert_parallel else []) + (["-s"] if d.skip_scales else [])
            steps.append(Step("unify", (self._python(
                job, "step-5-unify_measurements.py", *args,
                description=f"step 5: unify {job.world} ranks to 1 (TP1)"),)))
            cur = nxt
        if d.postprocess:
            name += "-post"
            nxt = layout.model_dir / name
            args = ["-m", _dir(cur), "-o", _dir(nxt)] + (["-d"] if job.deepseek else [])
            steps.append(Step("postprocess", (self._python(
                job, "step-3-postprocess-measure.py", *args,
                description="step 3 (optional): postprocess the unified set"),)))
            cur = nxt
        name += f"-expand-ep{d.expand_world}"
        final = layout.model_dir / name
        steps.append(Step("expand", (self._python(
            job, "step-6-expand-measurements.py", "-m", _dir(cur), "-o", str(final),
            "-w", str(d.expand_world),
            description=f"step 6: expand to {d.expand_world} ranks"),)))
        quant = layout.model_dir / f"maxabs_quant_{name}.json"
        return Recipe(tuple(steps), final, quant, d.world,
                      quant_copy=(layout.quant_config, quant, final / "inc_output"))

    def plan_calibration(self, cell: Cell, workdir: Path) -> list[Command]:
        from harness.calibration import service

        return service.plan_commands(cell, cast("CalibrationBackend", self), workdir)
