"""Fault-injection suite: fixtures, and the figures of issue 16's closing note.

`harness(...)` starts real `pytest suites` runs (faultkit.HarnessRun) with the test's own
results and process-registry dirs; the `ledger` counts faults survived/tried, bad inputs
refused/tried (the malformed-matrix corpus, when run in the same session), processes left and
results lost. The terminal summary prints them and writes them to $HARNESS_FAULTS_SUMMARY
(default: <basetemp>/faults-summary.json).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faultkit import BF16
from faultkit import FP8
from faultkit import ROOT
from faultkit import HarnessRun
from faultkit import Ledger
from faultkit import smoke_matrix

from harness.process_registry import reap_leftovers

LEDGER = pytest.StashKey[Ledger]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[LEDGER] = Ledger()


def _outcomes(terminalreporter: Any) -> dict[str, str]:
    """Each test's outcome from the terminal's statistics (they cover every test of the
    session; a conftest's report hooks would see only the tests under tests/faults)."""
    out: dict[str, str] = {}
    for reports in terminalreporter.stats.values():
        for rep in reports:
            nodeid, when = getattr(rep, "nodeid", None), getattr(rep, "when", None)
            if not nodeid or when is None:
                continue
            if rep.failed:
                out[nodeid] = "failed"
            elif when == "call" and out.get(nodeid) != "failed":
                out[nodeid] = "passed" if rep.passed else "skipped"
    return out


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    ledger, outcomes = config.stash[LEDGER], _outcomes(terminalreporter)
    bad = {k: v for k, v in outcomes.items()
           if "test_matrix_corpus.py::test_a_bad_matrix_is_refused" in k}
    if not ledger.faults and not bad:
        return
    figures = {
        "faults_tried": len(ledger.faults),
        "faults_survived": sum(outcomes.get(n) == "passed" for n in ledger.faults.values()),
        "bad_inputs_tried": len(bad),
        "bad_inputs_refused": sum(v == "passed" for v in bad.values()),
        "processes_left": ledger.left,
        "results_lost": ledger.lost,
        "leftovers_reaped_by_the_next_run": ledger.reaped,
        "faults": {f: outcomes.get(n, "not run") for f, n in ledger.faults.items()},
    }
    terminalreporter.section("issue 16: faults and bad input")
    terminalreporter.write_line(
        f"faults survived {figures['faults_survived']}/{figures['faults_tried']}; bad inputs "
        f"refused {figures['bad_inputs_refused']}/{figures['bad_inputs_tried']}; processes left "
        f"{ledger.left}; results lost {ledger.lost} (leftovers of SIGKILLed runs stopped by the "
        f"next run: {ledger.reaped})")
    target = os.environ.get("HARNESS_FAULTS_SUMMARY") or (
        str(ledger.directory / "faults-summary.json") if ledger.directory else "")
    if target:
        Path(target).write_text(json.dumps(figures, indent=1) + "\n", encoding="utf-8")
        terminalreporter.write_line(f"figures: {target}")


@pytest.fixture
def ledger(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Ledger:
    found = request.config.stash[LEDGER]
    found.directory = found.directory or tmp_path_factory.getbasetemp()
    return found


@pytest.fixture
def fault(request: pytest.FixtureRequest, ledger: Ledger) -> Callable[[str], None]:
    """Declare a fault this test injects (counted as survived when the test passes)."""
    def declare(name: str) -> None:
        assert name not in ledger.faults, f"fault {name!r} declared twice"
        ledger.faults[name] = request.node.nodeid
    return declare


@pytest.fixture(scope="session")
def calibration_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One calibration cache for the suite: the FP8 cell calibrates at most once."""
    return tmp_path_factory.mktemp("harness-cache")


@pytest.fixture
def harness(tmp_path: Path, calibration_cache: Path) -> Iterator[Callable[..., HarnessRun]]:
    """Start `pytest suites --matrix ...` runs sharing this test's results and registry dirs;
    at teardown anything still running is killed by its recorded pid and the registry's
    verified leftovers are stopped (a failing test must not leave a vLLM server behind)."""
    runs: list[HarnessRun] = []
    registry = tmp_path / "registry"
    results = tmp_path / "results"

    def start(matrix: Path, *args: str, cells: str = BF16,
              stages: str = "serving,accuracy") -> HarnessRun:
        out = tmp_path / f"run{len(runs)}.out"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HARNESS_PROCESS_DIR": str(registry),
               "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        argv = [sys.executable, "-m", "pytest", "suites", "--matrix", str(matrix), "-v",
                "-p", "no:cacheprovider", "--cells", cells, "--stages", stages,
                "--results-dir", str(results), "--harness-cache", str(calibration_cache),
                "--history-db", "none", *args]
        with out.open("wb") as sink:
            proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=sink,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        run = HarnessRun(proc, out, registry)
        runs.append(run)
        return run

    yield start
    for run in runs:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()
    reap_leftovers(registry, grace_s=2.0)


@pytest.fixture(scope="session")
def calibrated_cache(calibration_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared cache with the FP8 cell's calibration in it (a real calibration stage run,
    once; a test that ran the FP8 cell before leaves it there already)."""
    if not list(calibration_cache.glob("calibration/tiny-llama-*/done.json")):
        work = tmp_path_factory.mktemp("calibrate")
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "suites", "--matrix",
             str(smoke_matrix(work / "smoke.yaml")), "-q", "-p", "no:cacheprovider",
             "--cells", FP8, "--stages", "calibration", "--results-dir", str(work / "results"),
             "--harness-cache", str(calibration_cache), "--history-db", "none"],
            cwd=ROOT, capture_output=True, text=True, timeout=600,
            env={**os.environ, "PYTHONPATH": str(ROOT), "HARNESS_PROCESS_DIR": str(work / "reg"),
                 "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return calibration_cache
