"""A calibration as data: what to build (a job), the steps that build it, and how to run them.

Backends turn a `CalibrationJob` (and a `Derivation` to another TP/EP) into a `Recipe`: ordered
`Step`s of commands plus the files the harness writes around them. The stage runs recipes the
same way whatever the backend; `--plan` prints the same commands.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

from harness import progress
from harness.calibration.layout import OutputLayout
from harness.devices import ranks
from harness.process import Command
from harness.process import CommandFailed
from harness.process import Running
from harness.process import start
from harness.process import tail
from harness.process import wait_for


@dataclass(frozen=True)
class CalibrationJob:
    """One calibration to run: model, target device, data, and the layout it measures at."""

    model: str  # calibrate_model.sh's folder name
    source: str  # -m: local path or hub id
    architecture: str
    moe: bool
    num_experts: int
    device: str  # cpu | g2 | g3: the scales' target (the folder under <out>/<model>/)
    tp: int
    ep: int
    dataset: Path
    samples: int
    batch_size: int
    out: Path  # -o
    max_seq_len: int | None = None
    scale_method: str | None = None
    enforce_eager: bool = False
    timeout_s: float = 3600.0
    scripts_dir: str | None = None  # gaudi: vllm-gaudi/calibration
    quant_config_buffer: str | None = None  # gaudi multi-node: QUANT_CONFIG buffer on NFS
    env: tuple[tuple[str, str], ...] = ()  # backend_options.env of the cell (not in the key)
    # gaudi: the serving stack whose procedure measures (vllm-gaudi calibrate_model.sh, or the
    # fork's run_inc_calib.sh); in the key through the measure config it implies
    stack: str = "vllm-gaudi"
    fork_dir: str | None = None  # gaudi vllm-fork: the checkout run_inc_calib.sh runs in
    source_set: str | None = None  # gaudi: a pre-made measurement set to use (not measured)

    @property
    def world(self) -> int:
        """Ranks of the measurement: TP, times the DP factor EP adds beyond TP."""
        return ranks(self.tp, 1, self.ep)

    @property
    def layout(self) -> OutputLayout:
        return OutputLayout(self.out, self.model, self.device)

    @property
    def deepseek(self) -> bool:
        return "deepseek" in self.model


@dataclass(frozen=True)
class Derivation:
    """How a cell's set is derived from the job's: unify (step 5), postprocess (3), expand (6)."""

    tp: int
    ep: int
    world: int  # ranks of the derived set
    unify_ranks: int | None = None  # -r
    expert_parallel: bool = False  # -u
    skip_scales: bool = False  # -s
    postprocess: bool = False  # step 3 on the unified set (-d for DeepSeek)
    expand_world: int | None = None  # step 6 -w

    @property
    def name(self) -> str:
        return f"tp{self.tp}-ep{self.ep}"

    @property
    def steps(self) -> tuple[str, ...]:
        out = []
        if self.unify_ranks is not None:
            flags = " -u" if self.expert_parallel else ""
            out.append(f"unify -r {self.unify_ranks}{flags}{' -s' if self.skip_scales else ''}")
        if self.postprocess:
            out.append("postprocess")
        if self.expand_world is not None:
            out.append(f"expand -w {self.expand_world}")
        return tuple(out)


@dataclass(frozen=True)
class Step:
    """Commands run sequentially, or all at once (`parallel`: the ranks of one layout)."""

    name: str
    commands: tuple[Command, ...]
    parallel: bool = False
    # given the output of each command, a problem to report (e.g. too few HPUs in Ray), or None
    check: Callable[[str], str | None] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Recipe:
    """Steps that produce a measurement set, and where its serving config ends up."""

    steps: tuple[Step, ...]
    measurement_dir: Path  # the directory of the range (and scale) files
    quant_config: Path  # QUANT_CONFIG for serving this set
    world: int  # ranks (files) of the set
    # configs the harness writes before the steps: path -> JSON content
    writes: Mapping[Path, dict[str, Any]] = field(default_factory=dict)
    # after the steps: (source quant config, destination, dump_stats_path to point it at)
    quant_copy: tuple[Path, Path, Path] | None = None
    # JSON files the steps leave with per-rank figures (cpu workers), read after the run
    results: tuple[Path, ...] = ()
    # the derivation this recipe also produced (calibrate_model.sh -r fuses step 5), if any
    derivation: str | None = None

    def commands(self) -> list[Command]:
        return [c for s in self.steps for c in s.commands]


class StepFailed(Exception):
    """A recipe step failed; carries the step, command and log tail for the stage's error."""

    def __init__(self, step: str, message: str) -> None:
        self.step = step
        super().__init__(f"{step}: {message}")


def _log_name(step: str, i: int) -> str:
    return f"{step.replace(' ', '_')}.{i}.log"


def run_step(step: Step, logs: Path, timeout_s: float) -> list[str]:
    """Run a step's commands; on any failure stop the rest (by process group) and raise."""
    logs.mkdir(parents=True, exist_ok=True)
    progress.phase(f"calibration: {step.name}, {len(step.commands)} process(es) (logs: {logs})")
    outputs = []
    if step.parallel:
        procs = [start(c, logs / _log_name(step.name, i))
                 for i, c in enumerate(step.commands)]
        try:
            waited = wait_for(procs, timeout_s, poll_s=0.2)
            if waited.failed is not None:
                why = f"exited with status {waited.failed.poll()}"
                raise StepFailed(step.name, _failure(waited.failed, why))
            if waited.timed_out is not None:
                why = f"timed out after {timeout_s:g} s"
                raise StepFailed(step.name, _failure(waited.timed_out, why))
        finally:
            for p in procs:
                p.stop(grace_s=2.0)
        outputs = [p.log_path.read_text(encoding="utf-8", errors="replace") for p in procs]
    else:
        from harness.process import run

        for i, c in enumerate(step.commands):
            try:
                outputs.append(run(c, logs / _log_name(step.name, i), timeout_s))
            except CommandFailed as exc:
                raise StepFailed(step.name, str(exc)) from None
    if step.check is not None:
        for text in outputs:
            problem = step.check(text)
            if problem:
                raise StepFailed(step.name, problem)
    return outputs


def _failure(proc: Running, reason: str) -> str:
    return (f"`{proc.command.shell()}` {reason}\n--- last lines of {proc.log_path} ---\n"
            f"{tail(proc.log_path)}")


def run_recipe(recipe: Recipe, logs: Path, timeout_s: float) -> dict[str, float]:
    """Write the recipe's configs, run its steps, copy its quant config; step wall times."""
    for path, content in recipe.writes.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content) + "\n", encoding="utf-8")
    times: dict[str, float] = {}
    for step in recipe.steps:
        t0 = time.monotonic()
        run_step(step, logs, timeout_s)
        times[step.name] = round(time.monotonic() - t0, 3)
    if recipe.quant_copy is not None:
        src, dst, prefix = recipe.quant_copy
        cfg = json.loads(src.read_text(encoding="utf-8"))
        cfg["dump_stats_path"] = str(prefix)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(json.dumps(cfg) + "\n", encoding="utf-8")
    return times
