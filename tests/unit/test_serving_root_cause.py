"""Root-cause lines of a crashed server's log, on real vLLM 0.32 CPU logs (tests/data/vllm/):
the cause is named although it sits hundreds of lines above the 25-line tail."""

from __future__ import annotations

from pathlib import Path

from harness.process import tail
from harness.serving.root_cause import LIMIT
from harness.serving.root_cause import root_cause
from harness.serving.root_cause import root_cause_of
from harness.serving.server import ServerFailed

VLLM = Path(__file__).resolve().parents[1] / "data" / "vllm"
FP8_KV = "NotImplementedError: FP8 KV cache on CPU requires x86 with AVX-512 or AMX."


def test_a_worker_exception_at_start_up_is_named_although_far_above_the_tail():
    log = VLLM / "server_fp8_kv_unsupported.log"
    assert FP8_KV not in tail(log, 25)  # what the message showed before
    lines = root_cause_of(log)
    assert lines[:3] == [
        "(Worker pid=25563) WorkerProc hit an exception.",
        f"(Worker pid=25563) {FP8_KV}",
        "(EngineCore pid=25253) EngineCore failed to start.",
    ]
    # the same error re-raised by the engine and again by the API server's traceback: once
    assert sum("RuntimeError: Worker failed with error" in ln for ln in lines) == 1
    assert "(exit code: None)" in lines[-1]
    assert not any("Traceback" in ln or ln.lstrip().startswith("^") for ln in lines)


def test_a_segfaulting_worker_gives_the_segfault_the_dead_worker_and_the_engine_error():
    lines = root_cause_of(VLLM / "server_moe_ep2_segfault.log")
    assert lines[0] == "!!!!!!! Segfault encountered !!!!!!!"
    assert "(EngineCore pid=32517) Worker proc VllmWorker-0 died unexpectedly (exit code: -11), " \
           "shutting down executor." in lines
    assert lines[-1].startswith("(APIServer pid=31336) vllm.v1.engine.exceptions.EngineDeadError")
    # the final frame of the last traceback, just before its exception
    assert lines[-2].startswith('(APIServer pid=31336) File "') and "get_output_async" in lines[-2]
    assert not any("Dumping input data" in ln for ln in lines)  # one-line config dumps: noise
    assert len(lines) <= LIMIT


def test_a_healthy_log_has_no_root_cause():
    assert root_cause_of(VLLM / "server_bf16_ready.log") == []
    assert root_cause_of(VLLM / "no-such.log") == []


def test_more_causes_than_the_limit_keep_exceptions_and_fatal_lines_over_error_lines():
    text = "$ vllm serve --bad\n" + "".join(
        f"(APIServer pid=1) ERROR 11-23 16:42:45 [x.py:{i}] retrying {i}\n" for i in range(20)
    ) + "Killed\nMemoryError: cannot allocate 3 GiB\n"
    lines = root_cause(text, limit=4)
    assert lines == ["(APIServer pid=1) retrying 0", "(APIServer pid=1) retrying 1",
                     "Killed", "MemoryError: cannot allocate 3 GiB"]
    assert root_cause("$ vllm serve\nRuntimeError: x\n" * 1) == ["RuntimeError: x"]


def test_the_failure_message_has_the_root_cause_before_the_tail(tmp_path):
    log = tmp_path / "server.log"
    log.write_bytes((VLLM / "server_fp8_kv_unsupported.log").read_bytes())
    text = str(ServerFailed("the server process exited with status 1", "hint", log))
    cause = text.index("--- root cause in the server log ---")
    assert text.index(FP8_KV) > cause
    assert text.index("--- last lines of the server log") > text.index(FP8_KV)
    assert "\n".join(root_cause_of(log)) in text


def test_an_engine_killed_while_serving_is_named_from_the_api_servers_warning():
    # a real log: tests/faults SIGKILLed this FP8 server's EngineCore during lm-eval
    lines = root_cause_of(VLLM / "server_fp8_engine_sigkill.log")
    assert lines[:2] == [
        "(Worker pid=11782) Parent process exited, terminating worker queues",
        "(APIServer pid=11668) [shutdown] MPClient: engine core exited unexpectedly; starting "
        "cleanup",
    ]
    assert lines[-1].startswith("(APIServer pid=11668) vllm.v1.engine.exceptions.EngineDeadError")
    assert not any("ulimit" in ln for ln in lines)  # a warning that merely mentions an OSError
