"""Serving, lm_eval and the benchmark client, spelled for the cell's stack (stacks.py).

vllm-gaudi (seeds 000/001/002): `vllm serve <model> [--quantization inc] --kv-cache-dtype
fp8_inc|auto --tensor-parallel-size N ...` with QUANT_CONFIG the calibration's
`<out>/<model>/maxabs_quant_<dev>.json` (seed 000 step 8); `vllm bench serve`.

vllm-fork `deepseek_r1` (seed 003): `python3 -m vllm.entrypoints.openai.api_server --model
<model> ...` (start_vllm.sh:198), INC env by KV dtype (seed 003 "2.2 手动启动"): QUANT_CONFIG
from the fork's scripts/quant_configs and INC_MEASUREMENT_DUMP_PATH_PREFIX, the root the
config's relative dump_stats_path is joined to (a folder whose
`scripts/nc_workspace_measure_kvcache/` links the cell's calibrated set);
VLLM_REQUANT_FP8_INC=1 / VLLM_ENABLE_RUNTIME_DEQUANT=1 for FP8 checkpoints,
VLLM_MOE_N_SLICE=1 for MoE, INC_FORCE_NAIVE_SCALING=1, VLLM_HPU_MARK_SCALES_AS_CONST=false;
EP size in VLLM_EP_SIZE; `benchmarks/benchmark_serving.py`.

Both: an FP8 checkpoint (config.json quant_method fp8) is served with QUANT_CONFIG only, never
`--quantization inc` (stacks.checkpoint); multi-node env the stack does not forward to Ray
workers is named in the plan, to export on every node before `ray start`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any
from typing import cast

from harness.backends.common import BackendCore
from harness.backends.contracts import CalibrationBackend
from harness.backends.gaudi import stacks
from harness.backends.serving_plans import ServingPlans
from harness.calibration.artifacts import CalibrationArtifacts
from harness.cell import Cell
from harness.errors import HarnessError
from harness.process import Command
from harness.serving.commands import AccuracyTask
from harness.serving.commands import bench_command
from harness.serving.commands import lm_eval_command
from harness.serving.lmeval import resolve_task

VLLM_FORK_DIR = "/workspace/vllm-fork"  # seed 003's source folder
QUANT_CONFIG_BY_KV = {
    "auto": "inc_quant_per_channel_bf16kv.json",
    "fp8_inc": "inc_quant_per_channel_with_fp8kv_config.json",
}
SEED_DUMP_STATS_PATH = "scripts/nc_workspace_measure_kvcache/inc_measure_output"
QUANT_CONFIG_UNKNOWN = "<the calibration stage's maxabs_quant_<dev>.json>"
FORK_BENCH = ("python3", "benchmarks/benchmark_serving.py")  # seed 003, in the fork's checkout
# set per node (seed 003: VLLM_HOST_IP, *_SOCKET_IFNAME differ), never copied to other nodes
LOCAL_ONLY_ENV = frozenset(
    {"VLLM_HOST_IP", "GLOO_SOCKET_IFNAME", "HCCL_SOCKET_IFNAME", "PYTHONPATH"}
)
TRUST_REMOTE_CODE_ARCHITECTURES = frozenset({"deepseek_v3", "kimi_k2"})
INC_PREFIX_DIR = "inc_prefix"


def ray_hpus(status_output: str) -> tuple[float, float] | None:
    """(used, total) HPUs from `ray status` ("0.0/16.0 HPU"), None when no HPU line."""
    match = re.search(r"([\d.]+)/([\d.]+)\s+HPU\b", status_output)
    return (float(match.group(1)), float(match.group(2))) if match else None


class GaudiServing(ServingPlans, BackendCore):
    """Stage mixin of the backend; see harness/backends/contracts.py for the contracts."""

    # facts -------------------------------------------------------------------------------
    def served_name(self, cell: Cell) -> str:
        """As in seed 003, clients name the model by its path (or hub id)."""
        return cell.model.served_name or str(cell.model.source)

    def serving_facts(self, cell: Cell) -> dict[str, Any]:
        stack = stacks.profile(cell)
        facts: dict[str, Any] = {
            "stack": stack.name,
            "weights": "bf16",
            "kv_cache": cell.kv_cache_dtype,
            "emulated": "none",
        }
        if cell.is_fp8:
            ckpt = stacks.checkpoint(cell)
            facts["weights"] = (
                "fp8 checkpoint, INC scales via QUANT_CONFIG" if ckpt.quant_method == "fp8"
                else "fp8 via INC convert"
            )
            facts["checkpoint"] = ckpt.known_from
        return facts

    def fork_dir(self, cell: Cell) -> str:
        return str(self.option(cell, "vllm_fork_dir", VLLM_FORK_DIR))

    def quant_config_path(self, cell: Cell) -> Path:
        """The fork's stock INC config for the cell's KV dtype (seed 003's table)."""
        root = self.option(cell, "quant_configs_dir") or (
            f"{self.fork_dir(cell)}/scripts/quant_configs"
        )
        name = QUANT_CONFIG_BY_KV.get(cell.kv_cache_dtype)
        if name is None:
            raise HarnessError(
                f"{cell.id}: no INC quant config for kv_cache_dtype {cell.kv_cache_dtype!r} "
                f"(use {' or '.join(QUANT_CONFIG_BY_KV)})"
            )
        return Path(root) / name

    def served_quant_config(
        self, cell: Cell, calibration: CalibrationArtifacts | None, workdir: Path
    ) -> str:
        """QUANT_CONFIG: vllm-gaudi serves the calibration's maxabs_quant_<dev>.json (seed 000
        step 8); the fork serves its stock config, which loads our set via the INC prefix."""
        if stacks.profile(cell).quant_config == "fork-configs":
            return str(self.quant_config_path(cell))
        if calibration is not None:
            return str(calibration.quant_config)
        from harness.calibration import service

        backend = cast("CalibrationBackend", self)  # this mixin is part of the whole backend
        planned = service.planned_quant_config(cell, backend, workdir)
        return str(planned) if planned else QUANT_CONFIG_UNKNOWN

    # serving -------------------------------------------------------------------------------
    def inc_prefix(
        self, cell: Cell, calibration: CalibrationArtifacts | None, workdir: Path
    ) -> Path:
        """INC_MEASUREMENT_DUMP_PATH_PREFIX (fork stack): `<workdir>/inc_prefix`, populated with
        links to the calibration's files when a calibration is given (at run time, not for
        --plan). Multi-node cells put it beside the calibration's measurements instead (the
        NFS folder every node reads, seed 001), named by the cell's KV dtype."""
        prefix = workdir / INC_PREFIX_DIR
        if calibration is None:
            return prefix
        if cell.multi_node:
            measurements = Path(calibration.measurement_dir)
            prefix = measurements.parent / f"{INC_PREFIX_DIR}-{cell.kv_cache_dtype}"
        config = self.quant_config_path(cell)
        dump = SEED_DUMP_STATS_PATH
        if config.is_file():
            dump = json.loads(config.read_text(encoding="utf-8")).get("dump_stats_path", dump)
        if Path(dump).is_absolute():
            raise HarnessError(
                f"{config}: dump_stats_path {dump!r} is absolute, so "
                "INC_MEASUREMENT_DUMP_PATH_PREFIX cannot point it at this cell's calibration; "
                "use the stock relative path"
            )
        link_measurements(Path(calibration.dump_stats_path), prefix / dump)
        return prefix

    def serve_env(
        self, cell: Cell, calibration: CalibrationArtifacts | None, workdir: Path
    ) -> dict[str, str]:
        s = cell.settings.serving
        stack = stacks.profile(cell)
        env = dict(self.cell_env(cell))
        if cell.is_fp8:
            env["QUANT_CONFIG"] = self.served_quant_config(cell, calibration, workdir)
            if stack.name == "vllm-fork":
                env.update(self._fork_inc_env(cell, calibration, workdir))
        if stack.expert_parallel == "env" and cell.model.moe:
            env["VLLM_EP_SIZE"] = str(cell.ep)
        if s.warmup_cache:
            env["PT_HPU_RECIPE_CACHE_CONFIG"] = f"{s.warmup_cache},false,{s.warmup_cache_size_mb}"
        env.update(s.env)
        if cell.multi_node and stack.ray_extra_var:
            missing = [n for n in stacks.not_forwarded(stack, env) if n not in LOCAL_ONLY_ENV]
            if missing:
                env[stack.ray_extra_var] = ",".join(missing)
        return env

    def _fork_inc_env(
        self, cell: Cell, calibration: CalibrationArtifacts | None, workdir: Path
    ) -> dict[str, str]:
        """Seed 003's table "2.2 手动启动" (start_vllm.sh:71-80, set_head_node.sh:27-34)."""
        env = {"INC_MEASUREMENT_DUMP_PATH_PREFIX": str(self.inc_prefix(cell, calibration, workdir))}
        if stacks.checkpoint(cell).quant_method == "fp8":
            env["VLLM_REQUANT_FP8_INC"] = "1"
            env["VLLM_ENABLE_RUNTIME_DEQUANT"] = "1"
        if cell.model.moe:
            env["VLLM_MOE_N_SLICE"] = "1"
        env["INC_FORCE_NAIVE_SCALING"] = "1"
        env["VLLM_HPU_MARK_SCALES_AS_CONST"] = "false"
        return env

    def serve_command(
        self,
        cell: Cell,
        port: int,
        calibration: CalibrationArtifacts | None,
        workdir: Path | None = None,
    ) -> Command:
        s = cell.settings.serving
        stack = stacks.profile(cell)
        model = str(cell.model.source)
        argv = [*stack.serve_prefix, *((stack.model_flag,) if stack.model_flag else ()), model]
        note = ""
        if cell.is_fp8:
            ckpt = stacks.checkpoint(cell)
            if ckpt.quant_method is None:
                argv += ["--quantization", "inc"]
            elif ckpt.quant_method == "fp8":
                note = f"; FP8 checkpoint ({ckpt.known_from}): QUANT_CONFIG only, no --quantization"
            else:
                raise HarnessError(
                    f"{cell.id}: the checkpoint is quantized with {ckpt.quant_method!r} "
                    f"({ckpt.known_from}); INC FP8 serves BF16 or FP8 checkpoints only"
                )
            argv += ["--kv-cache-dtype", cell.kv_cache_dtype]
        elif cell.kv_cache_dtype != "auto":
            argv += ["--kv-cache-dtype", cell.kv_cache_dtype]
        if s.weights_load_device and stack.weights_load_device:
            argv += ["--weights-load-device", s.weights_load_device]
        argv += ["--tensor-parallel-size", str(cell.tp)]
        if cell.pp > 1:
            argv += ["--pipeline-parallel-size", str(cell.pp)]
        if cell.multi_node:
            argv += ["--distributed-executor-backend", "ray"]
        argv += ["--max-model-len", str(s.max_model_len), "--max-num-seqs", str(s.max_num_seqs)]
        if cell.ep > 1 and stack.expert_parallel == "flag":
            argv.append("--enable-expert-parallel")
        if s.block_size:
            argv += ["--block-size", str(s.block_size)]
        if s.max_num_batched_tokens:
            argv += ["--max-num-batched-tokens", str(s.max_num_batched_tokens)]
        if s.gpu_memory_utilization:
            argv += ["--gpu-memory-utilization", str(s.gpu_memory_utilization)]
        argv += ["--dtype", s.dtype]
        if s.enforce_eager:
            argv.append("--enforce-eager")
        if s.trust_remote_code or cell.model.architecture in TRUST_REMOTE_CODE_ARCHITECTURES:
            argv.append("--trust-remote-code")
        argv += ["--host", s.host, "--port", str(port)]
        argv += ["--served-model-name", self.served_name(cell)]
        argv += list(s.extra_args)
        where = f"{cell.nodes} nodes via Ray" if cell.multi_node else "one node"
        kv_warning = stacks.bf16_kv_warning(cell)
        if kv_warning:
            note += f"; {kv_warning}"
        if cell.ep > 1 and stack.expert_parallel == "env":
            note += f"; EP {cell.ep} via VLLM_EP_SIZE (the fork's --enable-expert-parallel is on)"
        return Command(
            tuple(argv),
            self.serve_env(cell, calibration, workdir or Path(".")),
            description=f"[stack {stack.name}] {stack.server_label} on {where}, "
            f"{cell.world_size} HPU" + ("s" if cell.world_size > 1 else "") + note,
            node=0 if cell.multi_node else None,
        )

    def ray_node_env(self, cell: Cell, env: dict[str, str]) -> list[str]:
        """Names of `env` that must be exported on every node before `ray start`: the stack's
        Ray workers do not receive them from the serving process (stacks.ray_forwards)."""
        return [n for n in stacks.not_forwarded(stacks.profile(cell), env)
                if n not in LOCAL_ONLY_ENV]

    def plan_ray_exports(self, cell: Cell, serve: Command) -> list[Command]:
        """Multi-node: what every node exports before `ray start` (shown by --plan)."""
        names = self.ray_node_env(cell, dict(serve.env))
        if not cell.multi_node or not names:
            return []
        stack = stacks.profile(cell)
        how = (f"; vLLM also copies them, named in {stack.ray_extra_var}"
               if stack.ray_extra_var else "")
        return [
            Command(
                ("export", *(f"{n}={serve.env[n]}" for n in names)),
                description=(
                    f"before `ray start` on every node: Ray workers of {stack.name} do not get "
                    f"{', '.join(names)} from the server process{how}" if node == 0 else ""
                ),
                node=node,
            )
            for node in range(cell.nodes)
        ]

    def serve_prechecks(self, cell: Cell) -> list[tuple[Command, Any]]:
        """Multi-node: the Ray cluster must show the cell's HPUs before vLLM is started."""
        if not cell.multi_node:
            return []

        def enough(output: str) -> str | None:
            found = ray_hpus(output)
            if found is None:
                return "`ray status` shows no HPU resource: start Ray on every node (seed 003)"
            if found[1] < cell.world_size:
                return (
                    f"the Ray cluster has {found[1]:g} HPUs, the cell needs {cell.world_size}: "
                    f"join all {cell.nodes} nodes with `ray start --address=<head>:<port>`"
                )
            return None

        cmd = Command(("ray", "status"), description="Ray cluster has the cell's HPUs", node=0)
        return [(cmd, enough)]

    # accuracy ------------------------------------------------------------------------------
    def accuracy_task(self, cell: Cell, workdir: Path, write: bool = True) -> AccuracyTask:
        return resolve_task(cell.settings.accuracy, workdir, "hub", write)

    def accuracy_command(
        self, cell: Cell, base_url: str, task: AccuracyTask, workdir: Path
    ) -> Command:
        env = {**self.cell_env(cell), "no_proxy": "127.0.0.1"}  # seed 003
        return lm_eval_command(
            task=task,
            served_name=self.served_name(cell),
            base_url=base_url,
            max_length=cell.settings.serving.max_model_len,
            settings=cell.settings.accuracy,
            output_dir=workdir,
            env=env,
        )

    # throughput ----------------------------------------------------------------------------
    def bench_command(
        self, cell: Cell, base_url: str, concurrency: int, workdir: Path
    ) -> Command:
        """vllm-gaudi: `vllm bench serve`; the fork's CLI has none, so seed 003's
        `benchmarks/benchmark_serving.py` (same flags, benchmark_serving.py:1007-1184)."""
        stack = stacks.profile(cell)
        fork = stack.bench == "benchmark_serving"
        cmd = bench_command(
            served_name=self.served_name(cell),
            tokenizer=str(cell.model.source),
            base_url=base_url,
            concurrency=concurrency,
            settings=cell.settings.throughput,
            result_dir=workdir,
            env={**self.cell_env(cell), "no_proxy": "127.0.0.1"},
            trust_remote_code=cell.settings.serving.trust_remote_code
            or cell.model.architecture in TRUST_REMOTE_CODE_ARCHITECTURES,
            prefix=FORK_BENCH if fork else None,
        )
        if not fork:
            return cmd
        return dataclasses.replace(
            cmd, cwd=self.fork_dir(cell),
            description=f"[stack {stack.name}] benchmark_serving.py at concurrency {concurrency}",
        )


def link_measurements(source_prefix: Path, target_prefix: Path) -> list[Path]:
    """Link a measurement set's range files under another INC dump prefix.

    `<source>_hooks_maxabs_<r>_<w>.{json,npz}` and `..._mod_list.json` become
    `<target>_hooks_maxabs_...` (symlinks). Scale files are not linked: the serving config's
    own scale method computes them (no stale scales from another method)."""
    name = source_prefix.name + "_hooks_maxabs"
    files = sorted(
        p for p in source_prefix.parent.glob(name + "_*")
        if re.fullmatch(re.escape(name) + r"_\d+_\d+(_mod_list)?\.(json|npz)", p.name)
    )
    if not files:
        raise HarnessError(
            f"{source_prefix.parent}: no measurement files named {name}_<rank>_<world>.npz "
            "(did the calibration stage finish?)"
        )
    target_prefix.parent.mkdir(parents=True, exist_ok=True)
    made = []
    for src in files:
        dst = target_prefix.parent / (target_prefix.name + src.name[len(source_prefix.name):])
        if dst.is_symlink() or dst.exists():
            dst.unlink()
        dst.symlink_to(src.resolve())
        made.append(dst)
    return made
