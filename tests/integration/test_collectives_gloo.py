"""The CPU collectives stage for real: gloo all_reduce between rank processes on this host."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from harness.backends.cpu import CpuBackend
from harness.cell import Cell
from harness.cell import Stage
from harness.gates import GateSpec
from harness.gates import evaluate
from harness.matrix import load_matrix
from harness.stages import StageContext
from harness.stages import collectives as stage

pytestmark = pytest.mark.integration


def smoke_cell(cell_id: str) -> Cell:
    """A smoke-cpu cell with a short time budget per size (the figures are the same kind)."""
    cell = next(c for c in load_matrix("smoke-cpu").cells if c.id == cell_id)
    coll = cell.settings.collectives.model_copy(update={"max_seconds_per_size": 0.3})
    settings = cell.settings.model_copy(update={"collectives": coll})
    return dataclasses.replace(cell, settings=settings, gates={})  # figures vary with load


@pytest.fixture(scope="module")
def healthy(tmp_path_factory) -> StageContext:
    """One real run of the stage on the smoke matrix's TP2/EP2 cell (2 ranks), shared."""
    workdir = tmp_path_factory.mktemp("collectives")
    cell = smoke_cell("tiny-moe/cpu/tp2-ep2/fp8-kv-fp8")
    ctx = StageContext(cell, Stage.COLLECTIVES, CpuBackend({"workdir": str(workdir)}), workdir,
                       workdir)  # fmt: skip
    stage.run(ctx)  # raises on a failed command, wrong data or a failed gate
    return ctx


def test_a_run_reports_algbw_and_busbw_per_size_with_verified_data(healthy):
    m = healthy.recorder.metrics
    assert m["nranks"] == 2 and m["nodes"] == 1 and m["data_verified"] is True
    for size in ("1m", "4m", "16m"):
        assert m[f"busbw_gbps@{size}"] > 0
        assert m[f"busbw_gbps@{size}"] == pytest.approx(m[f"algbw_gbps@{size}"])  # 2(n-1)/n = 1
    assert m["busbw_gbps"] == m["busbw_gbps@16m"] and m["size_bytes"] == 16 * 2**20
    rows = json.loads((healthy.workdir / "bandwidth.json").read_text())
    assert [r["size"] for r in rows] == ["1m", "4m", "16m"] and all(r["verified"] for r in rows)
    assert "[gloo_bench] all_reduce nranks=2" in (healthy.workdir / "command0.log").read_text()
    print("gloo busbw GB/s:", {k: v for k, v in m.items() if k.startswith("busbw")})


@pytest.mark.parametrize("factor, passed", [(0.5, True), (100, False)], ids=["floor", "broken"])
def test_the_busbw_gate_covers_every_size(healthy, factor, passed):
    """A floor under the slowest size passes; one a healthy box cannot reach fails."""
    m = healthy.recorder.metrics
    slowest = min(v for k, v in m.items() if k.startswith("busbw_gbps"))
    gate = {"collectives.busbw_gbps": GateSpec(min=slowest * factor)}
    outcomes = evaluate(healthy.cell.id, "collectives", m, gate)
    assert len(outcomes) == 4  # the headline and 1m, 4m, 16m
    assert all(o.passed for o in outcomes) is passed
    assert passed or "FAILED" in outcomes[0].message


def test_three_ranks_give_busbw_four_thirds_of_algbw_with_verified_data(tmp_path):
    out = tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, "-m", "harness.collectives.gloo_bench", "--nranks", "3",
         "--ranks_per_node", "3", "--sizes", "256k", "--loop", "20", "--warmup", "1",
         "--init_method", f"file://{tmp_path / 'rdv'}", "--timeout_s", "120", "--json", str(out)],
        capture_output=True, text=True, timeout=300, start_new_session=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert row["nranks"] == 3 and row["verified"] is True and row["iterations"] == 20
    assert row["busbw_gbps"] == pytest.approx(row["algbw_gbps"] * 4 / 3)
