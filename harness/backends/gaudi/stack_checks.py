"""Preflight checks that follow from the cell's stack (stacks.py): what the serving and
calibration commands will rely on, checked before anything long starts."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

from harness.backends.base import Check
from harness.backends.base import CheckStatus
from harness.backends.gaudi import stacks
from harness.backends.gaudi.node_checks import Facts
from harness.backends.gaudi.node_checks import per_node
from harness.cell import Cell

FORK_BENCH = "benchmarks/benchmark_serving.py"
HCCL_DEMO_BINARY = "hccl_demo"  # hccl_demo Makefile:12 `-o hccl_demo` (@f623d69)
_ROWS_IN_NAME = re.compile(r"calibration_(\d+)\.pkl$")


def stack_paths(cell: Cell, fork_dir: str, quant_config: Path | None) -> dict[str, str]:
    """Files the probe must find on every node for this cell's stack."""
    paths: dict[str, str] = {}
    if cell.runs("collectives"):
        paths["hccl_demo"] = str(Path(cell.settings.collectives.hccl_demo_dir) / HCCL_DEMO_BINARY)
    if stacks.profile(cell).name != "vllm-fork":
        return paths
    if cell.is_fp8 and quant_config is not None:
        paths["fork.quant_config"] = str(quant_config)
    if cell.runs("throughput"):
        paths["fork.benchmark_serving"] = f"{fork_dir}/{FORK_BENCH}"
    return paths


def paths_present(cell: Cell, nodes: Facts, paths: dict[str, str]) -> list[Check]:
    """One check per stack file: present on every node, or which nodes lack it."""
    fixes = {
        "hccl_demo": "cd {dir} && make (hccl_demo's Makefile builds ./hccl_demo; "
        "run_hccl_demo.py refuses to start without it)",
        "fork.quant_config": "git clone -b deepseek_r1 https://github.com/HabanaAI/vllm-fork.git "
        "and set backend_options.vllm_fork_dir (or quant_configs_dir) (seed 003)",
        "fork.benchmark_serving": "set backend_options.vllm_fork_dir to the fork's checkout "
        "(seed 003 runs benchmarks/benchmark_serving.py there)",
    }
    checks = []
    for name, path in paths.items():
        missing = [n for n, f in per_node(nodes) if not f.get("paths", {}).get(name)]
        if not missing:
            checks.append(Check(name, CheckStatus.PASS, f"{path} present"))
            continue
        fix = fixes[name].format(dir=cell.settings.collectives.hccl_demo_dir)
        checks.append(Check(name, CheckStatus.FAIL, f"{path} not found on {', '.join(missing)}",
                            fix))
    return checks


def checkpoint_decision(cell: Cell) -> Check:
    """What the serve command does with the checkpoint, and whether it read config.json."""
    ckpt = stacks.checkpoint(cell)
    if ckpt.quant_method == "fp8":
        text = f"fp8 checkpoint ({ckpt.known_from}): served with QUANT_CONFIG only"
    elif ckpt.quant_method is None:
        text = f"unquantized checkpoint ({ckpt.known_from}): served with --quantization inc"
    else:
        return Check("model.checkpoint", CheckStatus.FAIL,
                     f"quant_method {ckpt.quant_method} ({ckpt.known_from})",
                     "INC FP8 serves BF16 or FP8 checkpoints; use one of those")
    read = ckpt.known_from.startswith("config.json")
    return Check(
        "model.checkpoint", CheckStatus.PASS if read else CheckStatus.WARN, text,
        "" if read else "set the model's path to a local copy so config.json decides",
    )


def dataset_rows(dataset: str) -> tuple[int | None, str]:
    """Rows of a calibration pickle: read when reachable, else from an MLCommons-style name."""
    path = Path(dataset)
    if path.is_file():
        try:  # the user's dataset, unpickled as step 1 does (pd.read_pickle)
            with path.open("rb") as f:
                return len(pickle.load(f)), f"{path} has"
        except Exception:  # an unreadable pickle is the calibration's own error to report
            pass
    match = _ROWS_IN_NAME.search(dataset)
    if match:
        return int(match.group(1)), f"{path.name} (by its name) has"
    return None, ""


def samples_note(dataset: str | None, samples: int) -> str | None:
    """step-1-prepare-calibration-dataset.py:20 takes `ds.head(-l)`: a larger -l silently
    measures fewer samples (vllm-gaudi @091bbad)."""
    if not dataset or not str(dataset).endswith(".pkl"):
        return None
    rows, known = dataset_rows(str(dataset))
    if rows is None or samples <= rows:
        return None
    return (f"-l {samples} but {known} {rows} rows: step-1 takes head({samples}), so "
            f"{rows} samples are measured (set settings.calibration.samples: {rows})")


def calibration_samples(cell: Cell) -> Check:
    s = cell.settings.calibration
    if stacks.profile(cell).name == "vllm-fork":
        return Check("calibration.samples", CheckStatus.PASS,
                     f"run_inc_calib.sh --nprompts {s.samples} on its own pile set")
    note = samples_note(s.dataset, s.samples)
    if note is None:
        return Check("calibration.samples", CheckStatus.PASS,
                     f"{cell.settings.calibration.samples} samples requested")
    return Check("calibration.samples", CheckStatus.WARN, note,
                 "lower settings.calibration.samples or use a larger dataset")
