"""Signals and kills under real runs of smoke-cpu's tiny-llama cells (serving + accuracy).

Ctrl-C and SIGTERM of pytest while the vLLM server starts; then one run directory taken through
a chain of faults, each link the run after the previous fault (and so the proof of what the
next run does): SIGKILL of pytest at serving; --resume reaps the leftovers and its API server
is SIGKILLed while starting; --resume gets Ctrl-C twice at accuracy; --resume is SIGKILLed at
accuracy; --resume with the FP8 cell too finishes the BF16 cell, serves FP8 on the same fixed
port, and its engine is SIGKILLed at accuracy. Every link: nothing left of what the run
recorded, results.jsonl whole with its end record, the reports' wording.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest
from faultkit import BF16
from faultkit import FP8
from faultkit import HarnessRun
from faultkit import Ledger
from faultkit import engine_pid
from faultkit import member
from faultkit import own_traceback
from faultkit import smoke_matrix

from harness.serving.http import free_port

pytestmark = [pytest.mark.integration, pytest.mark.faults]

API_UP = "(APIServer pid="  # the server process runs and logs
ENGINE_UP = "EngineCore pid="  # the API server and its engine both exist
LMEVAL_UP = "Selected Tasks"  # lm-eval is running against the server, writing into the run
SERVING, ACCURACY = f"{BF16} [serving]", f"{BF16} [accuracy]"


def interrupted(run: HarnessRun, ledger: Ledger, sig: str, never_ran: list[str]) -> None:
    """What an interrupted run must leave: its end record, INTERRUPTED reports, every finished
    stage recorded, no traceback, nothing running, no record for the next run to reap."""
    assert run.finish() == 2, run.output()[-3000:]  # pytest's "interrupted"
    assert not own_traceback(run.output()), run.output()[-3000:]
    end = run.records()[-1]
    assert end["kind"] == "end" and end["status"] == "interrupted", end
    assert end["signal"] == sig and end["not_run"] == never_ran, end
    assert not ledger.count_lost(run)
    head = f"INTERRUPTED by {sig}; {len(never_ran)} selected stage(s) never ran: "
    for report in ("summary.md", "report.md"):
        assert head + ", ".join(never_ran) in (run.run_dir / report).read_text(), report
    run.none_left(ledger)
    assert run.owner_file is not None and not run.owner_file.exists()  # nothing to reap


def completed(run: HarnessRun, ledger: Ledger, code: int) -> list[dict]:
    """A run that ran to its end (stages may have failed): end record, nothing left."""
    assert run.finish(400) == code, run.output()[-3000:]
    assert not own_traceback(run.output()), run.output()[-3000:]
    records = run.records()
    end = records[-1]
    assert end["kind"] == "end" and end["status"] == "completed" and end["not_run"] == [], end
    assert "INTERRUPTED" not in (run.run_dir / "summary.md").read_text()
    assert not ledger.count_lost(run)
    run.none_left(ledger)
    return records


def sigkilled(run: HarnessRun, ledger: Ledger) -> None:
    """A SIGKILLed run keeps what it finished, line by line; it cannot write its end."""
    run.send(signal.SIGKILL)
    assert run.finish() == -signal.SIGKILL
    records = run.records()
    assert records[0]["kind"] == "run" and records[-1]["kind"] != "end"
    assert not ledger.count_lost(run)
    assert run.owner_file is not None and run.owner_file.exists()  # for the next run's reaper


def reaped(crashed: HarnessRun, nxt: HarnessRun, ledger: Ledger) -> None:
    """The next run stopped what the crashed one left before starting anything, and named the
    crashed run; the crashed run's registry file is gone."""
    nxt.wait_until("the next run's header", lambda: "harness: matrix" in nxt.output(), 120)
    crashed.none_left(ledger, within_s=1.0)
    assert crashed.owner_file is not None and not crashed.owner_file.exists()
    for line in nxt.output().splitlines():
        found = re.search(r"stopped (\d+) leftover process\(es\) of crashed run (\S+): group "
                          r"(\d+)", line)
        if found:
            assert found.group(2) == crashed.run_dir.name, line
            assert int(found.group(3)) in crashed.groups, line
            ledger.reaped += int(found.group(1))


def stage_records(run: HarnessRun) -> dict[tuple[str, str], dict]:
    """The last record of each (cell, stage) in the run directory."""
    return {(r["cell"], r["stage"]): r for r in run.records() if r["kind"] == "stage"}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_a_signal_while_the_server_starts_stops_everything_and_says_interrupted(
    harness, ledger, fault, tmp_path, sig
):
    name = signal.Signals(sig).name
    fault(f"{name} of pytest at serving")
    run = harness(smoke_matrix(tmp_path / "smoke.yaml"))
    server = run.at_stage("serve", API_UP)
    run.send(sig)
    interrupted(run, ledger, name, [SERVING, ACCURACY])
    assert server["pgid"] in run.groups


def test_one_run_through_kills_interrupts_and_resumes_on_a_fixed_port(
    harness, ledger, fault, tmp_path
):
    port = free_port()
    matrix = smoke_matrix(tmp_path / "smoke.yaml", serving={"port": port})

    # 1. SIGKILL of pytest while the server starts: no cleanup runs at all
    fault("SIGKILL of pytest at serving")
    first = harness(matrix)
    first.at_stage("serve", ENGINE_UP)
    sigkilled(first, ledger)
    run_dir = first.run_dir

    # 2. --resume reaps what is left; its API server is SIGKILLed while starting: the stage
    #    fails saying so, accuracy is skipped, the run completes
    fault("SIGKILL of pytest at serving: the next run reaps what it left")
    fault("SIGKILL of the vLLM API server at serving")
    second = harness(matrix, "--resume", "latest")
    reaped(first, second, ledger)
    api = second.at_stage("serve", ENGINE_UP)
    os.kill(member(api, api["pid"]), signal.SIGKILL)
    completed(second, ledger, 1)
    assert second.run_dir == run_dir
    stages = stage_records(second)
    assert stages[(BF16, "serving")]["status"] == "failed"
    assert "the server process exited with status -9 (killed by a signal)" in \
        stages[(BF16, "serving")]["message"]
    assert stages[(BF16, "accuracy")]["status"] == "skipped"

    # 3. --resume runs both again; Ctrl-C twice at accuracy (the second during cleanup)
    fault("SIGINT twice (second during cleanup) of pytest at accuracy")
    third = harness(matrix, "--resume", "latest")
    third.at_stage("lm_eval", LMEVAL_UP)
    third.send(signal.SIGINT)
    time.sleep(0.5)
    third.send(signal.SIGINT)
    interrupted(third, ledger, "SIGINT", [ACCURACY])
    assert stage_records(third)[(BF16, "serving")]["status"] == "passed"

    # 4. --resume: serving passed and is not run again; SIGKILL at accuracy, and lm-eval must
    #    not go on writing into the dead run's directory
    fault("SIGKILL of pytest at accuracy")
    fourth = harness(matrix, "--resume", "latest")
    lm_eval = fourth.at_stage("lm_eval", LMEVAL_UP)
    assert "/ 1 selected" in fourth.output()
    sigkilled(fourth, ledger)
    fourth.none_left(ledger, within_s=15.0, pgid=lm_eval["pgid"])  # died with pytest
    log = Path(lm_eval["log"])
    size = log.stat().st_size
    time.sleep(2.0)
    assert log.stat().st_size == size, "lm-eval went on writing into the dead run's directory"

    # 5. --resume with the FP8 cell too: reaps; the BF16 cell's accuracy passes; the FP8 cell
    #    serves on the same fixed port after the BF16 server stopped (TIME-WAIT sockets left),
    #    and its engine is SIGKILLed at accuracy: that stage fails naming the cause
    fault("SIGKILL of pytest at accuracy: the next run reaps and resumes")
    fault("fixed serving.port reused by the next cell")
    fault("SIGKILL of the vLLM engine process at accuracy")
    fifth = harness(matrix, "--resume", "latest", cells="tiny-llama/*")
    reaped(fourth, fifth, ledger)
    fifth.at_stage("lm_eval", LMEVAL_UP, nth=1, timeout_s=400)
    fp8_server = fifth.group("serve", nth=1)
    assert fp8_server is not None
    os.kill(member(fp8_server, engine_pid(Path(fp8_server["log"]))), signal.SIGKILL)
    records = completed(fifth, ledger, 1)
    assert fifth.run_dir == run_dir
    assert [r["kind"] for r in records].count("resume") == 4
    status = {k: r["status"] for k, r in stage_records(fifth).items()}
    assert status == {(BF16, "serving"): "passed", (BF16, "accuracy"): "passed",
                      (FP8, "serving"): "passed", (FP8, "accuracy"): "failed"}, status
    fp8 = stage_records(fifth)[(FP8, "accuracy")]["message"]
    assert "--- root cause in the server log ---" in fp8, fp8
    assert re.search(r"engine core exited unexpectedly|EngineDeadError", fp8), fp8
    for server in (fifth.group("serve"), fp8_server):  # BF16 then FP8, one port
        assert server is not None
        assert f"--port {port} " in Path(server["log"]).read_text().splitlines()[0]
    summary = (run_dir / "summary.md").read_text()
    assert "3 passed, 1 failed" in summary and "root cause in the server log" in summary
