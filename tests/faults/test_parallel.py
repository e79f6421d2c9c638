"""`pytest suites -n 2` for real, interrupted and resumed: cells at once on leased cores.

smoke-cpu's two TP1 tiny-llama cells (BF16 and FP8, 40 accuracy problems) run through a real
Ray cluster, real placement-group leases and two vLLM CPU servers at once, one core each. The
run gets Ctrl-C (SIGINT to its process group, as a terminal sends it) while both cells' lm-eval
runs; then `--resume latest -n 2` finishes it. The first run shows the host measured once by the
node phase and referred to by the other cell, the two serving phases overlapping on disjoint
cores (each server bound to its own), and, interrupted, every lease recorded and nothing left
alive: no process of any worker, no Ray cluster. The resumed run judges the FP8 gate against the
twin running beside it.
"""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path
from typing import Any

import pytest
from faultkit import BF16
from faultkit import FP8
from faultkit import HarnessRun
from faultkit import Ledger
from faultkit import own_traceback
from faultkit import smoke_matrix

from harness.workplan.figures import UnitRecord
from harness.workplan.figures import overlaps

pytestmark = [pytest.mark.integration, pytest.mark.faults]

LMEVAL_UP = "Selected Tasks"
STAGES = "preflight,collectives,calibration,serving,accuracy"


def units(run: HarnessRun) -> dict[str, UnitRecord]:
    return {r["unit"]: UnitRecord.from_dict(r) for r in run.records() if r["kind"] == "unit"}


def stages(run: HarnessRun) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["cell"], r["stage"]): r for r in run.records() if r["kind"] == "stage"}


def ray_gone(run: HarnessRun) -> bool:
    """The Ray cluster the run started no longer listens (its address is in the run's record;
    a resumed run's is the last)."""
    cluster = [r for r in run.records() if r["kind"] == "cluster"][-1]
    host, port = cluster["address"].rsplit(":", 1)
    with socket.socket() as sock:
        sock.settimeout(2.0)
        return sock.connect_ex((host, int(port))) != 0


def test_two_cells_at_once_interrupted_then_resumed(
    tmp_path: Path, harness: Any, ledger: Ledger, fault: Any
) -> None:
    matrix = smoke_matrix(tmp_path / "smoke.yaml", accuracy={"limit": 40})
    first = harness(matrix, "-n", "2", cells="tiny-llama/*", stages=STAGES)
    first.every_file = True
    fault("SIGINT to a pytest -n 2 run while two cells' lm-eval run")
    first.at_stage("lm_eval", LMEVAL_UP, nth=0, timeout_s=400)
    first.at_stage("lm_eval", LMEVAL_UP, nth=1, timeout_s=200)
    first.poll_groups()
    os.killpg(first.pid, signal.SIGINT)
    assert first.finish() == 2, first.output()[-3000:]
    assert not own_traceback(first.output()) or "KeyboardInterrupt" in first.output()
    end = first.records()[-1]
    assert end["kind"] == "end" and end["status"] == "interrupted", end
    assert sorted(end["not_run"]) == sorted(f"{c} [accuracy]" for c in (BF16, FP8)), end
    assert "INTERRUPTED by SIGINT" in (first.run_dir / "summary.md").read_text()
    assert not ledger.count_lost(first)
    first.none_left(ledger)
    assert ray_gone(first)

    # the units of the interrupted run: every lease recorded, cores never shared
    ran = units(first)
    bf16, fp8 = ran[f"serving/{BF16}"], ran[f"serving/{FP8}"]
    assert bf16.start < fp8.end and fp8.start < bf16.end, "the serving phases did not overlap"
    assert overlaps(list(ran.values())) == []
    assert len(bf16.cards) == len(fp8.cards) == 1 and bf16.cards != fp8.cards
    by = stages(first)
    bind = {by[(c, "serving")]["metrics"]["placement"] for c in (BF16, FP8)}
    assert bind == {f"VLLM_CPU_OMP_THREADS_BIND={card}" for _, card in bf16.cards + fp8.cards}
    # the host measured once by the node phase, alone on both cores; the other cell refers
    (node,) = [u for u in ran.values() if u.kind == "node"]
    assert len(node.cards) == 2
    for stage in ("preflight", "collectives"):
        refer = [c for c in (BF16, FP8) if "measured once" in by[(c, stage)]["message"]]
        assert len(refer) == 1 and by[(refer[0], stage)]["status"] == "passed", stage
        assert node.unit in by[(refer[0], stage)]["message"]
    measured = next(c for c in (BF16, FP8) if c not in refer)
    assert by[(refer[0], "collectives")]["metrics"]["busbw_gbps"] == (
        by[(measured, "collectives")]["metrics"]["busbw_gbps"]
    )

    fault("--resume of an interrupted pytest -n 2 run")
    second = harness(matrix, "-n", "2", "--resume", "latest", cells="tiny-llama/*",
                     stages=STAGES)
    second.every_file = True
    assert second.finish(600) == 0, second.output()[-3000:]
    assert second.run_dir == first.run_dir
    end = second.records()[-1]
    assert end["kind"] == "end" and end["status"] == "completed" and end["not_run"] == [], end
    by = stages(second)
    assert all(r["status"] == "passed" for r in by.values()), by
    paired = [g for g in by[(FP8, "accuracy")]["gates"] if g.get("test") == "paired"]
    assert paired and all(g["status"] in ("passed", "failed") for g in paired)  # evaluated
    assert {g["reference"] for g in paired} == {f"BF16 cell {BF16} of this run"}
    assert {g["n"] for g in paired} == {40}
    again = [u for u in units(second).values() if u.start > max(r.end for r in ran.values())]
    assert {u.unit for u in again} == {f"serving/{BF16}", f"serving/{FP8}"}
    assert "## Work units" in (second.run_dir / "report.md").read_text()
    assert not ledger.count_lost(second)
    second.none_left(ledger)
    assert ray_gone(second)
