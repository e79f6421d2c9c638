"""The server dies under a real run; the run goes on. smoke-cpu's two tiny-llama cells (BF16
then FP8) with one fixed `serving.port`: the BF16 server's API process is SIGKILLed during its
accuracy stage, the FP8 server must then start on the same port (issue 16: the probe refused a
port with only TIME-WAIT sockets left), and its engine process is SIGKILLed during accuracy.
Each failure names the cause; the run completes with its end record and leaves nothing."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest
from faultkit import BF16
from faultkit import FP8
from faultkit import HarnessRun
from faultkit import free_port
from faultkit import smoke_matrix

pytestmark = [pytest.mark.integration, pytest.mark.faults]

LMEVAL_UP = "Selected Tasks"


def _member(run: HarnessRun, group: dict, pid: int) -> int:
    """`pid`, checked to be a live member of the recorded group (never found by name)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2:].split()
    assert int(fields[2]) == group["pgid"] and int(fields[19]) >= group["start"], (pid, group)
    return pid


def _engine_pid(server_log: Path) -> int:
    found = re.search(r"\(EngineCore pid=(\d+)\)", server_log.read_text(errors="replace"))
    assert found, f"no EngineCore pid in {server_log}"
    return int(found.group(1))


def test_killed_server_and_engine_fail_their_stage_and_the_next_cell_reuses_the_port(
    harness, ledger, fault, tmp_path
):
    port = free_port()
    matrix = smoke_matrix(tmp_path / "smoke.yaml", serving={"port": port})
    run = harness(matrix, cells="tiny-llama/*")

    fault("SIGKILL of the vLLM API server at accuracy")
    run.at_stage("lm_eval", LMEVAL_UP)
    api = run.group("serve")
    assert api is not None
    os.kill(_member(run, api, api["pid"]), signal.SIGKILL)

    fault("SIGKILL of the vLLM engine process at accuracy")
    fault("fixed serving.port reused by the next cell")
    run.at_stage("lm_eval", LMEVAL_UP, nth=1, timeout_s=400)
    fp8_server = run.group("serve", nth=1)
    assert fp8_server is not None
    os.kill(_member(run, fp8_server, _engine_pid(Path(fp8_server["log"]))), signal.SIGKILL)

    assert run.finish(300) == 1, run.output()[-3000:]  # failed stages, not an interrupted run
    assert "Traceback (most recent call last)" not in run.output()
    records = run.records()
    stages = {(r["cell"], r["stage"]): r for r in records if r["kind"] == "stage"}
    status = {k: r["status"] for k, r in stages.items()}
    assert status == {(BF16, "serving"): "passed", (BF16, "accuracy"): "failed",
                      (FP8, "calibration"): "passed", (FP8, "serving"): "passed",
                      (FP8, "accuracy"): "failed"} or status == {
        (BF16, "serving"): "passed", (BF16, "accuracy"): "failed",
        (FP8, "serving"): "passed", (FP8, "accuracy"): "failed"}, status
    bf16 = stages[(BF16, "accuracy")]["message"]
    assert "the server process exited with status -9 (killed by a signal)" in bf16, bf16
    fp8 = stages[(FP8, "accuracy")]["message"]
    assert "--- root cause in the server log ---" in fp8, fp8
    assert re.search(r"EngineDeadError|died unexpectedly|Engine core|engine died", fp8), fp8
    for server in (api, fp8_server):  # both started on the one port
        assert f"--port {port} " in Path(server["log"]).read_text().splitlines()[0]
    end = records[-1]
    assert end["kind"] == "end" and end["status"] == "completed" and end["not_run"] == [], end
    assert not ledger.count_lost(run)
    summary = (run.run_dir / "summary.md").read_text()
    assert "INTERRUPTED" not in summary
    assert "the server process exited with status -9" in summary
    run.none_left(ledger)
