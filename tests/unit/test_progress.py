"""Live progress: the throttling rule with an injected clock, and the lines a real pytest run
prints with and without a TTY (never in JUnit)."""

from __future__ import annotations

import pytest

from harness import progress
from harness.progress import Throttle


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _drive(throttle: Throttle, clock: Clock, steps: list[tuple[float, str]]) -> list[str]:
    shown = []
    for t, text in steps:
        clock.t = t
        emit = throttle.feed(text)
        if emit is not None:
            shown.append(f"{emit.how}:{text}")
    return shown


PHASES = [
    (0.0, "serving c: starting"),
    (1.0, "serving c: waiting for /health, 1 s (log: server.log)"),
    (10.0, "serving c: waiting for /health, 10 s (log: server.log)"),
    (31.5, "serving c: waiting for /health, 31 s (log: server.log)"),
    (40.0, "serving c: waiting for /health, 40 s (log: server.log)"),
    (41.0, "accuracy: 1/100 problems"),
    (42.0, "accuracy: 2/100 problems"),
    (80.0, "accuracy: 90/100 problems"),
]


def test_without_a_tty_one_line_a_phase_and_at_most_one_a_30_s():
    clock = Clock()
    shown = _drive(Throttle(tty=False, clock=clock), clock, PHASES)
    assert shown == [
        "line:serving c: starting",
        "line:serving c: waiting for /health, 1 s (log: server.log)",
        "line:serving c: waiting for /health, 31 s (log: server.log)",
        "line:accuracy: 1/100 problems",
        "line:accuracy: 90/100 problems",
    ]


def test_on_a_tty_every_update_rewrites_the_line():
    clock = Clock()
    shown = _drive(Throttle(tty=True, clock=clock), clock, PHASES)
    assert shown == [f"rewrite:{text}" for _, text in PHASES]


def test_an_explicit_phase_and_a_new_test_always_print():
    clock = Clock()
    throttle = Throttle(tty=False, clock=clock)
    assert throttle.feed("throughput c=32: 1/128 requests") is not None
    assert throttle.feed("throughput c=32: 2/128 requests") is None
    assert throttle.feed("throughput c=32: 3/128 requests", new_phase=True) is not None
    throttle.reset()
    assert throttle.feed("throughput c=32: 4/128 requests") is not None


def test_client_progress_reads_the_last_tqdm_count_of_its_log(tmp_path):
    log = tmp_path / "lm_eval.log"
    assert progress.client_text("accuracy", log, "problems", 12.4) == (
        f"accuracy: running, 12 s (log: {log})")
    log.write_text("$ lm_eval ...\nRequesting API:   0%|          | 0/100 [00:00<?, ?it/s]"
                   "\rRequesting API:  37%|###7      | 37/100 [00:12<00:20,  3.01it/s]")
    assert progress.client_text("accuracy", log, "problems", 13.0) == (
        f"accuracy: 37/100 problems (log: {log})")


def test_outside_a_run_the_module_functions_do_nothing():
    with progress.installed(None):
        progress.update("calibration: rank 1/2 measuring, 12/64 samples")
        progress.phase("calibration: quantize")
        progress.done()
    assert progress._current is None


INNER = """
from harness import progress

class Clock:
    t = 0.0
    def __call__(self):
        return self.t

def test_stage():
    clock = Clock()
    p = progress._current
    p.throttle.clock = clock
    p.throttle.tty = TTY
    for t, text in STEPS:
        clock.t = t
        progress.update(text)
    print("captured stage output")

def test_next():
    pass
"""

CONFTEST = """
from harness.progress import ProgressPlugin

def pytest_configure(config):
    config.pluginmanager.register(ProgressPlugin(config), "harness-progress")
"""


def _run(pytester: pytest.Pytester, tty: bool) -> tuple[str, str]:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_inner=INNER.replace("TTY", str(tty)).replace(
        "STEPS", repr(PHASES)))
    result = pytester.runpytest("-p", "no:cacheprovider", "--junitxml=junit.xml", "-v")
    result.assert_outcomes(passed=2)
    return result.stdout.str(), (pytester.path / "junit.xml").read_text()


def test_a_real_run_without_a_tty_prints_the_phase_lines(pytester):
    out, junit = _run(pytester, tty=False)
    lines = [ln for ln in out.splitlines() if progress.PREFIX in ln]
    assert lines == [progress.PREFIX + t for t in (
        "serving c: starting",
        "serving c: waiting for /health, 1 s (log: server.log)",
        "serving c: waiting for /health, 31 s (log: server.log)",
        "accuracy: 1/100 problems",
        "accuracy: 90/100 problems",
    )]
    assert "test_inner.py::test_stage PASSED" in out
    assert "serving c" not in junit and "accuracy:" not in junit


def test_a_real_run_on_a_tty_rewrites_in_place_and_clears_before_the_outcome(pytester):
    out, junit = _run(pytester, tty=True)
    # every update is a rewrite of the line (pytester's capture turns its "\r" into a newline):
    # all of them shown, each padded over the whole width to erase the previous one
    lines = out.split("\n")
    shown = [ln for ln in lines if ln.startswith(progress.PREFIX)]
    assert [ln.rstrip() for ln in shown] == [progress.PREFIX + t for _, t in PHASES]
    assert all(len(ln) == len(shown[0]) > len(progress.PREFIX + PHASES[-1][1]) for ln in shown)
    # then the line is cleared and pytest's outcome starts afresh, with the test id again
    after = lines[lines.index(shown[-1]) + 1:lines.index(shown[-1]) + 3]
    assert after[0].strip() == "" and after[1].startswith("test_inner.py::test_stage PASSED")
    assert "accuracy:" not in junit


def test_a_workers_progress_reaches_the_controller_line_by_line(tmp_path):
    """pytest -n: a worker's Progress writes to a file, the controller prints whole lines
    with the worker's name, each once."""
    from harness.progress import FileReporter
    from harness.progress import Follower
    from harness.progress import Progress

    class Terminal:
        def __init__(self):
            self.lines = []

        def ensure_newline(self):
            pass

        def write_line(self, text):
            self.lines.append(text)

    worker = Progress(FileReporter(tmp_path / "gw1.log"), clock=lambda: 0.0)
    worker.update("accuracy: 3/40 problems", new_phase=True)
    worker.update("accuracy: 4/40 problems")  # same phase within the interval: held back
    with (tmp_path / "gw0.log").open("w") as fh:
        fh.write("[harness] serving: starting\n[harness] half a li")
    terminal = Terminal()
    follower = Follower(tmp_path, terminal)
    follower.drain()
    assert terminal.lines == ["[gw0] [harness] serving: starting",
                              "[gw1] [harness] accuracy: 3/40 problems"]
    with (tmp_path / "gw0.log").open("a") as fh:
        fh.write("ne\n")
    follower.drain()
    follower.drain()
    assert terminal.lines[2:] == ["[gw0] [harness] half a line"]
