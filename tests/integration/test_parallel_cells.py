"""`pytest suites -n 2` for real on this host: cells at once on disjoint leased cores.

The two TP1 tiny-llama cells of smoke-cpu (BF16 and FP8) run through a real Ray cluster, real
placement-group leases, two vLLM CPU servers at the same time (one core each) and lm-eval; the
node phase (preflight, collectives) measures the host once for both; the FP8 accuracy gate waits
for its twin running beside it and is judged against it. Accuracy is limited to 40 problems to
keep the test short (the matrix is smoke-cpu with that one setting changed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.workplan.figures import UnitRecord
from harness.workplan.figures import overlaps

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BF16, FP8 = "tiny-llama/cpu/tp1/bf16-kv-auto", "tiny-llama/cpu/tp1/fp8-kv-fp8"
STAGES = ("preflight", "collectives", "calibration", "serving", "accuracy")


def short_matrix(tmp: Path) -> Path:
    """smoke-cpu with 40 accuracy problems and absolute model paths."""
    data = yaml.safe_load((REPO / "matrices" / "smoke-cpu.yaml").read_text())
    for model in data["models"].values():
        model["path"] = str((REPO / "matrices" / model["path"]).resolve())
    data["settings"]["accuracy"]["limit"] = 40
    path = tmp / "smoke-parallel.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run_suites(tmp: Path, *extra: str, stages: tuple[str, ...] = STAGES) -> dict[str, Any]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "suites", "--matrix", str(short_matrix(tmp)),
         "--cells", "tiny-llama/*", "--stages", ",".join(stages), "-n", "2",
         "--results-dir", str(tmp / "reports"), "--harness-cache", str(tmp / "cache"),
         "--history-db", "none", "-q", "-p", "no:cacheprovider", *extra],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1200,
    )
    (results,) = (tmp / "reports").glob("*/results.jsonl")
    records = [json.loads(line) for line in results.read_text().splitlines()]
    return {
        "proc": proc,
        "by": {(r["cell"], r["stage"]): r for r in records if r.get("kind") == "stage"},
        "units": [UnitRecord.from_dict(r) for r in records if r.get("kind") == "unit"],
        "run_dir": results.parent,
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_suites(tmp_path_factory.mktemp("parallel"))


def test_every_stage_passes(run: dict[str, Any]) -> None:
    failed = {k: v["message"][:300] for k, v in run["by"].items() if v["status"] != "passed"}
    assert not failed and run["proc"].returncode == 0, (failed, run["proc"].stdout[-3000:])
    expected = {(c, s) for c in (BF16, FP8) for s in STAGES} - {(BF16, "calibration")}
    assert set(run["by"]) == expected  # a BF16 cell has no calibration


def test_the_two_cells_served_at_once_on_disjoint_cores(run: dict[str, Any]) -> None:
    units = {u.unit: u for u in run["units"]}
    bf16, fp8 = units[f"serving/{BF16}"], units[f"serving/{FP8}"]
    assert bf16.start < fp8.end and fp8.start < bf16.end, "the serving phases did not overlap"
    assert overlaps(run["units"]) == []
    assert len(bf16.cards) == len(fp8.cards) == 1 and bf16.cards != fp8.cards
    bind = {run["by"][(c, "serving")]["metrics"]["placement"] for c in (BF16, FP8)}
    cores = {f"VLLM_CPU_OMP_THREADS_BIND={card}" for _, card in bf16.cards + fp8.cards}
    assert bind == cores  # each server was bound to the core its unit leased
    summary = (run["run_dir"] / "summary.md").read_text()
    assert "## Work units" in summary and "utilisation" in summary


def test_the_host_is_measured_once_and_both_cells_refer_to_it(run: dict[str, Any]) -> None:
    node_units = [u for u in run["units"] if u.kind == "node"]
    assert len(node_units) == 1 and len(node_units[0].cards) == 2  # the whole host, alone
    for stage in ("preflight", "collectives"):
        measured = [c for c in (BF16, FP8) if "measured once" not in run["by"][(c, stage)]["message"]]
        assert len(measured) == 1, stage
        other = FP8 if measured == [BF16] else BF16
        ref = run["by"][(other, stage)]
        assert node_units[0].unit in ref["message"] and measured[0] in ref["message"]
        assert ref["metrics"].get("busbw_gbps") == run["by"][(measured[0], stage)]["metrics"].get(
            "busbw_gbps"
        )


def test_the_fp8_gate_is_judged_against_the_twin_running_beside_it(run: dict[str, Any]) -> None:
    gates = run["by"][(FP8, "accuracy")]["gates"]
    paired = [g for g in gates if g.get("test") == "paired"]
    assert paired, gates
    for gate in paired:
        assert gate["status"] in ("passed", "failed")  # evaluated, never unknown
        assert gate["reference"] == f"BF16 cell {BF16} of this run"
        assert gate["n"] == 40
