"""Signals to a real run of smoke-cpu's tiny-llama BF16 cell (serving + accuracy): Ctrl-C and
SIGTERM while the vLLM server starts; then a chain on one run directory, each link a fault and
the next link the run after it: SIGKILL of pytest at serving, --resume with a double Ctrl-C at
accuracy, --resume killed by SIGTERM at accuracy, --resume SIGKILLed at accuracy, --resume to
the end. Every link: nothing left of what the run recorded, results.jsonl whole, the reports'
wording, and what the next run does."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from faultkit import BF16
from faultkit import HarnessRun
from faultkit import Ledger
from faultkit import smoke_matrix

pytestmark = [pytest.mark.integration, pytest.mark.faults]

ENGINE_UP = "EngineCore pid="  # the server is starting: API server and engine both exist
LMEVAL_UP = "Selected Tasks"  # lm-eval is running against the server, writing into the run
TRACEBACK = "Traceback (most recent call last)"


def interrupted(run: HarnessRun, ledger: Ledger, sig: str, never_ran: list[str]) -> None:
    """What an interrupted run must leave: its end record, INTERRUPTED reports, every finished
    stage recorded, no traceback, nothing running, no record for the next run to reap."""
    assert run.finish() == 2, run.output()[-3000:]  # pytest's "interrupted"
    assert TRACEBACK not in run.output()
    end = run.records()[-1]
    assert end["kind"] == "end" and end["status"] == "interrupted", end
    assert end["signal"] == sig and end["not_run"] == never_ran, end
    assert not ledger.count_lost(run)
    head = f"INTERRUPTED by {sig}; {len(never_ran)} selected stage(s) never ran: "
    for report in ("summary.md", "report.md"):
        assert head + ", ".join(never_ran) in (run.run_dir / report).read_text(), report
    run.none_left(ledger)
    assert run.owner_file is not None and not run.owner_file.exists()  # nothing to reap


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_a_signal_while_the_server_starts_stops_everything_and_says_interrupted(
    harness, ledger, fault, tmp_path, sig
):
    name = signal.Signals(sig).name
    fault(f"{name} of pytest at serving")
    run = harness(smoke_matrix(tmp_path / "smoke.yaml"))
    server = run.at_stage("serve", ENGINE_UP)
    run.send(sig)
    interrupted(run, ledger, name, [f"{BF16} [serving]", f"{BF16} [accuracy]"])
    assert server["pgid"] in run.groups


def _sigkilled(run: HarnessRun, ledger: Ledger) -> list[dict]:
    """A SIGKILLed run keeps what it finished, line by line; it cannot write its end."""
    run.send(signal.SIGKILL)
    assert run.finish() == -signal.SIGKILL
    records = run.records()
    assert records[0]["kind"] == "run" and records[-1]["kind"] != "end"
    assert not ledger.count_lost(run)
    assert run.owner_file is not None and run.owner_file.exists()  # for the next run's reaper
    return records


def _reaped(crashed: HarnessRun, nxt: HarnessRun, ledger: Ledger) -> None:
    """The next run stopped what the crashed one left (before it started anything) and said
    so, naming the crashed run; the crashed run's registry file is gone."""
    nxt.wait_until("the next run's header", lambda: "harness: matrix" in nxt.output(), 120)
    crashed.none_left(ledger, within_s=1.0)
    assert crashed.owner_file is not None and not crashed.owner_file.exists()
    run_id = crashed.run_dir.name
    for line in nxt.output().splitlines():
        if "stopped a crashed run's leftover" in line:
            assert f"of crashed run {run_id}: group " in line, line
            assert int(line.split(": group ")[1].split()[0]) in crashed.groups, line


def test_kill_interrupt_and_resume_one_run_to_its_end(harness, ledger, fault, tmp_path):
    matrix = smoke_matrix(tmp_path / "smoke.yaml")
    accuracy = f"{BF16} [accuracy]"

    # 1. SIGKILL of pytest while the server starts: no cleanup runs at all
    fault("SIGKILL of pytest at serving")
    first = harness(matrix)
    first.at_stage("serve", ENGINE_UP)
    assert [r["kind"] for r in _sigkilled(first, ledger)] == ["run"]
    run_dir = first.run_dir

    # 2. the next run (--resume) reaps what is left, serves, and gets Ctrl-C twice at accuracy
    fault("SIGINT twice (second during cleanup) of pytest at accuracy")
    fault("SIGKILL of pytest at serving: the next run reaps and resumes")
    second = harness(matrix, "--resume", "latest")
    _reaped(first, second, ledger)
    second.at_stage("lm_eval", LMEVAL_UP)
    second.send(signal.SIGINT)
    time.sleep(0.5)
    second.send(signal.SIGINT)
    interrupted(second, ledger, "SIGINT", [accuracy])
    assert second.run_dir == run_dir
    assert [(r["stage"], r["status"]) for r in second.records() if r["kind"] == "stage"] == [
        ("serving", "passed")]

    # 3. --resume: serving passed and is not run again; SIGTERM (a CI timeout) at accuracy
    fault("SIGTERM of pytest at accuracy")
    third = harness(matrix, "--resume", "latest")
    third.at_stage("lm_eval", LMEVAL_UP)
    third.send(signal.SIGTERM)
    interrupted(third, ledger, "SIGTERM", [accuracy])
    assert "/ 1 selected" in third.output() and (BF16, "serving") not in third.reported()

    # 4. --resume, SIGKILLed at accuracy: lm-eval must not go on writing into the dead run
    fault("SIGKILL of pytest at accuracy")
    fourth = harness(matrix, "--resume", "latest")
    lm_eval = fourth.at_stage("lm_eval", LMEVAL_UP)
    _sigkilled(fourth, ledger)
    fourth.none_left(ledger, within_s=15.0, pgid=lm_eval["pgid"])  # died with pytest
    log = Path(lm_eval["log"])
    size = log.stat().st_size
    time.sleep(2.0)
    assert log.stat().st_size == size, "lm-eval went on writing into the dead run's directory"

    # 5. --resume reaps and finishes: the whole selection passed in the one directory
    fault("SIGKILL of pytest at accuracy: the next run reaps and resumes to the end")
    fifth = harness(matrix, "--resume", "latest")
    _reaped(fourth, fifth, ledger)
    assert fifth.finish(400) == 0, fifth.output()[-3000:]
    records = fifth.records()
    assert fifth.run_dir == run_dir
    assert records[-1]["kind"] == "end" and records[-1]["status"] == "completed"
    assert records[-1]["not_run"] == []
    assert [r["kind"] for r in records].count("resume") == 4
    last = {(r["cell"], r["stage"]): r["status"] for r in records if r["kind"] == "stage"}
    assert last == {(BF16, "serving"): "passed", (BF16, "accuracy"): "passed"}
    assert not ledger.count_lost(fifth)
    summary = (run_dir / "summary.md").read_text()
    assert "INTERRUPTED" not in summary and "2 passed, 0 failed" in summary
    fifth.none_left(ledger)
