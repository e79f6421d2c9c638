"""The port probe: a TIME-WAIT socket left by the previous server does not hold a fixed port."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from harness.serving.http import free_port
from harness.serving.http import port_in_use

HOST = "127.0.0.1"


def _tcp_states(port: int) -> set[str]:
    """States (hex, /proc/net/tcp) of the sockets whose local port is `port`."""
    states = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port:
            states.add(fields[3])
    return states


def _leave_time_wait(port: int) -> None:
    """Serve one connection on `port` and close it server side first, as a stopped server."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((HOST, port))
        listener.listen()
        client = socket.create_connection((HOST, port))
        conn, _ = listener.accept()
        conn.close()  # the active close: this side goes to TIME-WAIT
        client.recv(1)  # the FIN arrived
        client.close()


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux TCP states")
def test_a_time_wait_socket_does_not_make_a_fixed_port_busy():
    port = free_port(HOST)
    _leave_time_wait(port)
    deadline = time.monotonic() + 5
    while "06" not in _tcp_states(port) and time.monotonic() < deadline:  # 06 = TIME_WAIT
        time.sleep(0.01)
    assert "06" in _tcp_states(port), "the test did not leave a TIME-WAIT socket"
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind((HOST, port))  # what the old probe did: it reported the port in use
    assert port_in_use(HOST, port) is False
    # and the next server binds it, as uvicorn does
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((HOST, port))
        server.listen()


def test_a_listening_port_is_in_use():
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((HOST, 0))
        listener.listen()
        assert port_in_use(HOST, listener.getsockname()[1]) is True
