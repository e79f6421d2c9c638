"""What the fault tests drive: real runs of the smoke-cpu matrix (issue 16, "Proof").

A `HarnessRun` is one `python -m pytest suites --matrix ...` subprocess with its own results
dir and its own process-registry dir (HARNESS_PROCESS_DIR), so a test sees only what its runs
started and never touches another engineer's processes. What a run started is read from the
registry as it starts (the file goes away at a clean exit: the groups are remembered), and
"nothing left" is checked on those recorded groups (process group id, started no earlier than
the recorded leader) and on the run's group token in the environment: never by name.

The `Ledger` counts what the closing note of issue 16 asks for (conftest.py prints it).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.process_registry import ENV_TOKEN
from harness.process_registry import _groups as live_groups
from harness.process_registry import start_time

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "matrices" / "smoke-cpu.yaml"
BF16 = "tiny-llama/cpu/tp1/bf16-kv-auto"
FP8 = "tiny-llama/cpu/tp1/fp8-kv-fp8"
ITEM = re.compile(r"^suites/test_(\w+)\.py::test_\w+\[(\S+)\] (PASSED|FAILED|SKIPPED|ERROR)",
                  re.M)


def smoke_matrix(path: Path, **settings: dict[str, Any]) -> Path:
    """smoke-cpu as it is, with absolute model paths, 8 accuracy problems and `settings`
    merged per stage (a file of its own: `extends` would resolve the models beside `path`)."""
    data = yaml.safe_load(SMOKE.read_text(encoding="utf-8"))
    for model in data["models"].values():
        model["path"] = str((SMOKE.parent / model["path"]).resolve())
    data["name"] = "smoke-cpu-faults"
    data["settings"]["accuracy"]["limit"] = 8
    for stage, values in settings.items():
        data["settings"].setdefault(stage, {}).update(values)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


# -- /proc: the recorded groups' survivors ----------------------------------------------------

def _carries(pid: int, prefix: bytes) -> bool:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return any(var.startswith(prefix) for var in env.split(b"\0"))


# -- one run -----------------------------------------------------------------------------------

@dataclass
class HarnessRun:
    """A `pytest suites` subprocess, what it recorded, and what it left."""

    proc: subprocess.Popen[bytes]
    out: Path
    registry: Path
    groups: dict[int, dict[str, Any]] = field(default_factory=dict)  # pgid -> group record
    owner_file: Path | None = None
    # a `pytest -n` run: its xdist workers record the groups they start under their own pids,
    # so every file of the (per-test) registry dir is read
    every_file: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.out.read_text(encoding="utf-8", errors="replace")

    def poll_groups(self) -> dict[int, dict[str, Any]]:
        """Remember every group the run recorded so far (read from its registry file)."""
        for path in self.registry.glob("*.jsonl" if self.every_file else f"{self.pid}-*.jsonl"):
            if path.name.startswith(f"{self.pid}-"):
                self.owner_file = path
            with contextlib.suppress(OSError):
                for line in path.read_text(encoding="utf-8").splitlines():
                    with contextlib.suppress(ValueError):
                        rec = json.loads(line)
                        if rec.get("kind") == "group":
                            self.groups.setdefault(int(rec["pgid"]), rec)
        return self.groups

    def group(self, word: str, nth: int = 0) -> dict[str, Any] | None:
        """The `nth` recorded group whose command has `word` (e.g. "serve", "lm_eval")."""
        found = [g for g in self.poll_groups().values() if word in g["argv"]
                 or any(Path(a).name == word for a in g["argv"])]
        return found[nth] if len(found) > nth else None

    def wait_until(self, what: str, predicate: Callable[[], Any], timeout_s: float = 300) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.poll_groups()
            got = predicate()
            if got:
                return got
            if self.proc.poll() is not None:
                pytest.fail(f"the run ended (status {self.proc.returncode}) before {what}:\n"
                            + self.output()[-3000:])
            time.sleep(0.2)
        pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}:\n"
                    + self.output()[-3000:])

    def at_stage(self, word: str, log_mark: str, nth: int = 0, timeout_s: float = 300
                 ) -> dict[str, Any]:
        """Wait until the `nth` group with `word` runs and its log shows `log_mark`."""
        def ready() -> dict[str, Any] | None:
            g = self.group(word, nth)
            if g is None:
                return None
            with contextlib.suppress(OSError):
                if log_mark in Path(g["log"]).read_text(encoding="utf-8", errors="replace"):
                    return g
            return None
        group: dict[str, Any] = self.wait_until(f"{word} showing {log_mark!r}", ready, timeout_s)
        return group

    def send(self, sig: int) -> None:
        self.poll_groups()  # what it started up to the signal (a clean exit removes the file)
        os.kill(self.pid, sig)

    def finish(self, timeout_s: float = 180) -> int:
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the run did not end within {timeout_s:g} s:\n" + self.output()[-3000:])
        return code

    @property
    def run_dir(self) -> Path:
        m = re.search(r"^harness: matrix .* results (\S+)$", self.output(), re.M)
        assert m, self.output()[-3000:]
        return Path(m.group(1))

    def records(self) -> list[dict[str, Any]]:
        """results.jsonl, every line a JSON object (a torn or garbled line fails the test)."""
        lines = (self.run_dir / "results.jsonl").read_text(encoding="utf-8").splitlines()
        out = []
        for i, line in enumerate(lines, 1):
            try:
                rec = json.loads(line)
            except ValueError:
                pytest.fail(f"results.jsonl line {i} is not JSON: {line[:200]!r}")
            assert isinstance(rec, dict), (i, line)
            out.append(rec)
        return out

    def reported(self) -> set[tuple[str, str]]:
        """(cell, stage) of every stage test pytest reported an outcome for."""
        return {(cell, stage) for stage, cell, _ in ITEM.findall(self.output())}

    def lost(self) -> list[tuple[str, str]]:
        """Stages that ended in this run (pytest said so) without their record in results.jsonl
        after the run's own first line (the last `resume` line of a resumed run)."""
        records = self.records()
        starts = [i for i, r in enumerate(records) if r.get("kind") in ("run", "resume")]
        own = records[starts[-1]:] if starts else records
        recorded = {(r["cell"], r["stage"]) for r in own if r.get("kind") == "stage"}
        return sorted(self.reported() - recorded)

    def survivors(self, pgid: int | None = None) -> list[int]:
        """Live processes of the groups this run recorded (same pgid, started no earlier than
        the recorded leader) or carrying this run's group token; of one group with `pgid`."""
        self.poll_groups()
        token = f"{ENV_TOKEN}={self.pid}-".encode()
        left = []
        for group_id, pids in live_groups().items():
            if pgid is not None and group_id != pgid:
                continue
            group = self.groups.get(group_id)
            for pid in pids:
                began = start_time(pid)
                ours = group is not None and began is not None and began >= int(group["start"])
                if pid != os.getpid() and (ours or (pgid is None and _carries(pid, token))):
                    left.append(pid)
        return sorted(left)

    def none_left(self, ledger: Ledger, within_s: float = 15.0, pgid: int | None = None) -> None:
        """Nothing of this run (or of its group `pgid`) alive; a bounded wait, as a SIGKILLed
        member takes a moment to go."""
        deadline = time.monotonic() + within_s
        while (left := self.survivors(pgid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        ledger.left += len(left)
        assert not left, f"processes left by run {self.pid}: {left} of groups {list(self.groups)}"


@dataclass
class Ledger:
    """The figures of the closing note."""

    faults: dict[str, str] = field(default_factory=dict)  # fault -> nodeid that injected it
    left: int = 0
    lost: int = 0
    reaped: int = 0  # processes of a SIGKILLed run that the next run stopped (and said so)
    directory: Path | None = None  # where the figures are written

    def count_lost(self, run: HarnessRun) -> list[tuple[str, str]]:
        lost = run.lost()
        self.lost += len(lost)
        return lost


def member(group: dict[str, Any], pid: int) -> int:
    """`pid`, checked to be a live member of the recorded group (never found by name)."""
    began = start_time(pid)
    assert began is not None and began >= group["start"], (pid, group)
    assert pid in live_groups().get(group["pgid"], []), (pid, group)
    return pid


def engine_pid(server_log: Path) -> int:
    """The EngineCore's pid as the server logs it."""
    found = re.search(r"\(EngineCore pid=(\d+)\)", server_log.read_text(errors="replace"))
    assert found, f"no EngineCore pid in {server_log}"
    return int(found.group(1))


def own_traceback(output: str) -> bool:
    """A Python traceback printed by the run itself (a quoted server log's lines carry their
    process tag, e.g. "(APIServer pid=7) ERROR ... Traceback", and do not count)."""
    return bool(re.search(r"^(?:Traceback \(most recent call last\)|INTERNALERROR)", output,
                          re.M))
