"""How a run ended: the end record's wording, and cleanup that a second Ctrl-C cannot cut."""

from __future__ import annotations

import os
import signal

import pytest

from harness.run_ending import SignalWatch
from harness.run_ending import end_record
from harness.run_ending import ending_line
from harness.run_ending import signals_deferred

SELECTED = [("a/cpu/tp1/bf16-kv-auto", s) for s in ("preflight", "serving", "accuracy")]


def test_an_interrupted_run_says_so_and_lists_the_stages_that_never_ran():
    record = end_record(2, "SIGINT", SELECTED, SELECTED[:1])
    assert record["kind"] == "end" and record["status"] == "interrupted"
    assert record["not_run"] == ["a/cpu/tp1/bf16-kv-auto [serving]",
                                 "a/cpu/tp1/bf16-kv-auto [accuracy]"]
    assert ending_line(record) == (
        "INTERRUPTED by SIGINT; 2 selected stage(s) never ran: a/cpu/tp1/bf16-kv-auto "
        "[serving], a/cpu/tp1/bf16-kv-auto [accuracy]"
    )


def test_a_completed_run_has_no_ending_line_and_an_internal_error_has_one():
    assert ending_line(end_record(0, None, SELECTED, SELECTED)) == ""
    assert end_record(1, None, SELECTED, SELECTED)["status"] == "completed"  # failed tests
    error = end_record(3, None, SELECTED, SELECTED[:2])
    assert ending_line(error).startswith("INTERNAL ERROR (exit status 3); 1 selected stage")


def test_the_watch_notes_the_signal_and_keeps_the_handler_that_was_there():
    seen: list[int] = []
    before = signal.signal(signal.SIGTERM, lambda s, f: seen.append(s))
    watch = SignalWatch().install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert watch.first == "SIGTERM" and seen == [signal.SIGTERM]
    finally:
        watch.uninstall()
        signal.signal(signal.SIGTERM, before)


def test_a_second_ctrl_c_during_cleanup_is_deferred_until_cleanup_ends():
    before = signal.getsignal(signal.SIGINT)
    wrote = []
    with signals_deferred(bound_s=60, say=False) as deferred:
        os.kill(os.getpid(), signal.SIGINT)
        wrote.append("summary.md")  # cleanup goes on
    assert deferred == ["SIGINT"] and wrote == ["summary.md"]
    assert signal.getsignal(signal.SIGINT) is before


def test_past_its_bound_a_signal_interrupts_cleanup_again():
    with pytest.raises(KeyboardInterrupt, match="SIGINT during cleanup"), \
            signals_deferred(bound_s=0, say=False):
        os.kill(os.getpid(), signal.SIGINT)


def test_a_run_interrupted_before_any_stage_ended_has_no_broken_table():
    # seen in tests/faults: Ctrl-C while the first server started gave "| cell |  |" + "|---|"
    from harness.report.markdown import render_summary

    text = render_summary([], "smoke-cpu", "r1")
    assert "0 passed, 0 failed, 0 skipped across 0 cells" in text
    assert "| cell" not in text and "|---|" not in text


def test_a_resumed_run_counts_only_its_own_attempt_as_run():
    from harness.run_ending import attempt_stages

    records = [
        {"kind": "run"},
        {"kind": "stage", "cell": "c", "stage": "serving"},
        {"kind": "stage", "cell": "c", "stage": "accuracy"},  # skipped in the first attempt
        {"kind": "end", "status": "completed"},
        {"kind": "resume"},
        {"kind": "stage", "cell": "c", "stage": "serving"},
    ]
    assert attempt_stages(records) == [("c", "serving")]
    end = end_record(2, "SIGINT", [("c", "serving"), ("c", "accuracy")], attempt_stages(records))
    assert end["not_run"] == ["c [accuracy]"]
    assert attempt_stages(records[:4]) == [("c", "serving"), ("c", "accuracy")]
