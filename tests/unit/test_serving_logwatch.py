"""The server log watcher against real vLLM CPU logs recorded in tests/data/vllm."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.serving.inc_plugin import READY_MARK
from harness.serving.logwatch import FAILURE_PATTERNS
from harness.serving.logwatch import LogWatch

DATA = Path(__file__).resolve().parents[1] / "data" / "vllm"


def test_a_healthy_bf16_start_has_no_fatal_line():
    watch = LogWatch(DATA / "server_bf16_ready.log")
    assert watch.poll() is None


def test_an_fp8_kv_cache_refused_by_this_cpu_is_caught_with_its_hint():
    watch = LogWatch(DATA / "server_fp8_kv_unsupported.log")
    failure = watch.poll()
    assert failure is not None
    assert "FP8 KV cache on CPU requires x86 with AVX-512 or AMX" in failure.line
    assert "emulates an FP8 KV cache" in failure.pattern.hint


def test_the_inc_mark_is_seen_in_a_quantized_start_and_missing_in_a_bf16_one():
    quantized = LogWatch(DATA / "server_inc_quantize.log", ready_marks=(READY_MARK,))
    quantized.poll()
    assert quantized.missing_marks == ()
    plain = LogWatch(DATA / "server_bf16_ready.log", ready_marks=(READY_MARK,))
    plain.poll()
    assert plain.missing_marks == (READY_MARK,)


def test_a_growing_log_is_read_once_and_a_split_line_is_matched_when_complete(tmp_path):
    log = tmp_path / "server.log"
    log.write_text("INFO starting\n(EngineCore pid=1) ERROR Engine", encoding="utf-8")
    watch = LogWatch(log)
    assert watch.poll() is None  # the fatal line is not complete yet
    with log.open("a", encoding="utf-8") as fh:
        fh.write("DeadError: EngineCore encountered an issue\n")
    failure = watch.poll()
    assert failure is not None and failure.pattern.reason == "the vLLM engine died"
    assert watch.poll() is failure  # sticky, and the file is not re-read from the start


@pytest.mark.parametrize(
    ("line", "reason", "hint_part"),
    [
        (
            "RuntimeError: [Rank:0] FATAL ERROR :: MODULE:PT_DEVMEM Allocation failed for "
            "size::939524096 (896)MB",
            "device memory allocation failed",
            "tensor parallelism",
        ),
        ("OSError: [Errno 98] Address already in use", "already in use", "free port"),
        ("vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue",
         "engine died", "log tail"),
        ("RuntimeError: Engine core initialization failed. See root cause above.",
         "failed to initialise", "root cause"),
    ],
    ids=["pt-devmem-seed-001", "port-in-use", "engine-dead", "engine-init"],
)
def test_each_known_fatal_line_maps_to_a_reason_and_a_hint(line, reason, hint_part):
    failure = next(p for p in FAILURE_PATTERNS if p.search(line))
    assert reason in failure.reason
    assert hint_part in failure.hint


def test_the_most_specific_cause_wins_when_several_patterns_match(tmp_path):
    log = tmp_path / "server.log"
    log.write_text(
        "RuntimeError: [Rank:0] FATAL ERROR :: MODULE:PT_DEVMEM Allocation failed for size::1\n"
        "vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue\n",
        encoding="utf-8",
    )
    failure = LogWatch(log).poll()
    assert failure is not None and "PT_DEVMEM" in failure.line


def test_an_engine_core_that_dies_under_a_serving_api_process_is_caught():
    # recorded: the engine core was killed while the API server kept running
    failure = LogWatch(DATA / "server_bf16_sigterm.log").poll()
    assert failure is not None
    assert failure.line.startswith("EngineDeadError")


def test_a_segfault_in_a_worker_is_caught_before_the_engine_dead_line():
    # recorded: vLLM CPU's fused MoE kernel crashed on the first request (TP2/EP2, AVX2 host)
    failure = LogWatch(DATA / "server_moe_ep2_segfault.log").poll()
    assert failure is not None
    assert failure.pattern.reason == "a vLLM process crashed"
