"""Server lifecycle faults with a stand-in server process (seconds, not a vLLM start).

The stand-in speaks the two endpoints the lifecycle uses (/health, /v1/chat/completions) and
misbehaves on demand: never answers, exits, logs a fatal engine line while staying alive, or
forgets the INC mark. Each fault must fail fast with a clear reason and leave no process.
tests/integration/test_serving_cpu.py repeats the faults that matter with vLLM itself.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from harness.process import Command
from harness.process import CommandFailed
from harness.serving.client import run_client
from harness.serving.http import free_port
from harness.serving.inc_plugin import READY_MARK
from harness.serving.server import ServerFailed
from harness.serving.server import ServerSpec
from harness.serving.server import running

pytestmark = pytest.mark.integration

STAND_IN = r'''
import json, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer

mode, port = sys.argv[1], int(sys.argv[2])
print("INFO starting stand-in", mode, flush=True)
if mode == "never":
    time.sleep(600)
if mode == "exit":
    time.sleep(0.3)
    print("RuntimeError: something broke", flush=True)
    sys.exit(3)
if mode == "dead-engine":
    print("(EngineCore pid=1) ERROR vllm.v1.engine.exceptions.EngineDeadError: EngineCore "
          "encountered an issue.", flush=True)
    time.sleep(600)
if mode == "inc":
    print("(Worker pid=2) INFO [inc_plugin.py:1] Preparing model with INC..", flush=True)

class H(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
    def do_POST(self):
        n = int(self.headers.get("Content-Length", 0))
        req = json.loads(self.rfile.read(n))
        body = json.dumps({"choices": [{"message": {"content": "#### 7"}}],
                           "usage": {"completion_tokens": 3}, "model": req["model"]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

HTTPServer(("127.0.0.1", port), H).serve_forever()
'''


def _spec(tmp_path: Path, mode: str, timeout_s: float = 20.0, port: int | None = None,
          marks: tuple[str, ...] = ()) -> ServerSpec:
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN, encoding="utf-8")
    port = port or free_port()
    cmd = Command((sys.executable, str(script), mode, str(port)), {}, "stand-in server")
    return ServerSpec(cmd, "127.0.0.1", port, "stand-in", timeout_s, ready_marks=marks)


def _gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_server_becomes_ready_answers_the_smoke_request_and_is_stopped(tmp_path):
    with running(_spec(tmp_path, "ok"), tmp_path / "server.log") as server:
        pgid = server.process.pgid
        assert server.ready_s is not None and server.ready_s < 20
        assert server.smoke["reply"] == "#### 7" and server.smoke["completion_tokens"] == 3
        assert not _gone(pgid)
    assert _gone(pgid)
    assert (tmp_path / "server.log").read_text().startswith("$ ")  # the command heads the log


def test_a_server_that_never_becomes_ready_fails_at_its_timeout_and_is_stopped(tmp_path):
    t0 = time.monotonic()
    with (
        pytest.raises(ServerFailed, match=r"not ready after 2 s: .*/health never answered 200"),
        running(_spec(tmp_path, "never", timeout_s=2), tmp_path / "server.log"),
    ):
        pass
    assert time.monotonic() - t0 < 15
    assert "starting stand-in never" in (tmp_path / "server.log").read_text()


def test_a_fatal_engine_line_fails_at_once_although_the_process_lives(tmp_path):
    t0 = time.monotonic()
    with (
        pytest.raises(ServerFailed, match="the vLLM engine died: .*EngineDeadError") as err,
        running(_spec(tmp_path, "dead-engine", timeout_s=120), tmp_path / "server.log"),
    ):
        pass
    assert time.monotonic() - t0 < 15  # not the 120 s timeout
    assert "EngineDeadError" in err.value.log_tail
    assert err.value.hint


def test_a_server_that_exits_while_starting_reports_its_status_and_log(tmp_path):
    with (
        pytest.raises(ServerFailed, match="exited with status 3") as err,
        running(_spec(tmp_path, "exit"), tmp_path / "server.log"),
    ):
        pass
    assert "something broke" in str(err.value)
    assert err.value.root_cause == ["RuntimeError: something broke"]  # named before the tail
    assert "--- root cause in the server log ---\nRuntimeError: something broke\n--- last" in \
        str(err.value)


def test_a_port_already_in_use_fails_before_anything_starts(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with (
            pytest.raises(ServerFailed, match=f"port {port} on 127.0.0.1 is already in use"),
            running(_spec(tmp_path, "ok", port=port), tmp_path / "server.log"),
        ):
            pass
    assert not (tmp_path / "server.log").exists()


def test_readiness_waits_for_the_inc_mark_of_an_fp8_cell(tmp_path):
    with running(_spec(tmp_path, "inc", marks=(READY_MARK,)), tmp_path / "a.log") as server:
        assert server.watch.missing_marks == ()
    with (
        pytest.raises(ServerFailed, match="log never showed 'Preparing model with INC'"),
        running(_spec(tmp_path, "ok", timeout_s=2, marks=(READY_MARK,)), tmp_path / "b.log"),
    ):
        pass


def test_a_server_killed_mid_client_stops_the_client_and_says_the_server_died(tmp_path):
    client = Command((sys.executable, "-c", "import time; time.sleep(120)"), {}, "client")
    with running(_spec(tmp_path, "ok"), tmp_path / "server.log") as server:
        pgid = server.process.pgid
        threading.Timer(1.0, os.killpg, (pgid, signal.SIGKILL)).start()
        t0 = time.monotonic()
        with pytest.raises(ServerFailed, match="exited with status -9 \\(killed by a signal\\)"):
            run_client(client, tmp_path / "client.log", 60, server)
        assert time.monotonic() - t0 < 20
    assert _gone(pgid)


def test_a_failing_client_reports_its_own_log_when_the_server_is_fine(tmp_path):
    client = Command((sys.executable, "-c", "import sys; print('bad flag'); sys.exit(2)"), {}, "c")
    with (
        running(_spec(tmp_path, "ok"), tmp_path / "server.log") as server,
        pytest.raises(CommandFailed, match="exited with status 2") as err,
    ):
        run_client(client, tmp_path / "client.log", 60, server)
    assert "bad flag" in err.value.log_tail


def test_ctrl_c_inside_the_block_still_stops_the_server_group(tmp_path):
    with (
        pytest.raises(KeyboardInterrupt),
        running(_spec(tmp_path, "ok"), tmp_path / "server.log") as server,
    ):
        pgid = server.process.pgid
        raise KeyboardInterrupt
    assert _gone(pgid)


class _Store:
    def __init__(self, root: Path) -> None:
        self.root = root

    def cell_dir(self, cell_id: str, stage: str) -> Path:
        path = self.root / cell_id.replace("/", "__") / stage
        path.mkdir(parents=True, exist_ok=True)
        return path


class _Session:
    """What `serve` is given: a backend (a stand-in server spec) and the serving workdir."""

    def __init__(self, tmp_path: Path, mode: str, timeout_s: float = 20.0) -> None:
        self.store = _Store(tmp_path / "run")
        self.tmp_path = tmp_path
        session = self

        class Backend:
            def skip_reason(self, cell, stage):
                return None

            def serve_prechecks(self, cell):
                return []

            def server_spec(self, cell, port, calibration, workdir):
                spec = _spec(session.tmp_path, mode, timeout_s, port)
                return ServerSpec(spec.command, spec.host, spec.port, "stand-in", timeout_s,
                                  facts={"emulated": "none"})

        self.backend = Backend()

    def serve_args(self, cell):
        return self.backend, cell, None, self.store.cell_dir(cell.id, "serving")


def _bf16_cell():
    from harness.matrix import load_matrix

    return next(c for c in load_matrix("smoke-cpu").cells if not c.is_fp8)


def test_the_serving_stage_yields_a_handle_and_stops_the_server_after_the_block(tmp_path):
    import dataclasses

    from harness.stages.serving import serve

    cell = dataclasses.replace(_bf16_cell(), model=dataclasses.replace(
        _bf16_cell().model, path=str(tmp_path)))
    with serve(*_Session(tmp_path, "ok").serve_args(cell)) as handle:
        pgid = handle.server.process.pgid
        assert handle.facts == {"emulated": "none"}
        assert handle.smoke["completion_tokens"] == 3
        assert handle.log_path.parent.name == "serving"
    assert _gone(pgid)


def test_a_failed_start_is_the_cells_serving_error_and_a_block_error_stays_its_own(tmp_path):
    import dataclasses

    from harness.errors import StageError
    from harness.stages.serving import serve

    cell = dataclasses.replace(_bf16_cell(), model=dataclasses.replace(
        _bf16_cell().model, path=str(tmp_path)))
    expected = r"tiny-llama/cpu/tp1/bf16-kv-auto \[serving\]: the server process exited with status 3"
    with (
        pytest.raises(StageError, match=expected) as err,
        serve(*_Session(tmp_path, "exit").serve_args(cell)),
    ):
        pass
    assert "the harness restarts nothing" in err.value.hint
    with (
        pytest.raises(ValueError, match="from the block"),
        serve(*_Session(tmp_path, "ok").serve_args(cell)),
    ):
        raise ValueError("from the block")
    missing = dataclasses.replace(cell, model=dataclasses.replace(
        cell.model, path=str(tmp_path / "nowhere")))
    with (
        pytest.raises(StageError, match="no model at .*nowhere"),
        serve(*_Session(tmp_path, "ok").serve_args(missing)),
    ):
        pass
