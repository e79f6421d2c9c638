"""Running a stage's per-node commands together: rounds, first failure stops the rest, timeouts."""

from __future__ import annotations

import os
import time

import pytest

from harness.collectives import gloo_bench
from harness.collectives.launch import rounds
from harness.collectives.launch import run_local
from harness.process import Command
from harness.process import CommandFailed


def sh(script: str, node: int | None = None) -> Command:
    return Command(("sh", "-c", script), node=node)


def test_node_zero_or_a_local_command_starts_a_new_round():
    cmds = [sh("a", 0), sh("b", 1), sh("c", 0), sh("d", 1), sh("e"), sh("f")]
    assert [[c.argv[2] for c in r] for r in rounds(cmds)] == [["a", "b"], ["c", "d"], ["e"], ["f"]]


def test_commands_run_together_with_the_cell_env_and_keep_their_logs(tmp_path):
    outs = run_local([sh("echo one $X"), sh("echo two $X")], tmp_path, {"X": "env"}, 30)
    assert [o.returncode for o in outs] == [0, 0]
    assert [o.text for o in outs] == ["one env\n", "two env\n"]
    assert [o.log_path.name for o in outs] == ["command0.log", "command1.log"]


def test_the_first_failure_stops_the_others_at_once(tmp_path):
    start = time.monotonic()
    outs = run_local([sh("exit 3"), sh("sleep 30")], tmp_path, {}, 60)
    assert time.monotonic() - start < 15
    assert outs[0].returncode == 3 and outs[1].returncode not in (0, None)


def test_a_timeout_names_the_command_and_leaves_no_process(tmp_path):
    pidfile = tmp_path / "pid"
    with pytest.raises(CommandFailed, match=r"`sh -c .*sleep 30.*` timed out after 0.5 s"):
        run_local([sh(f"echo $$ > {pidfile}; sleep 30")], tmp_path, {}, 0.5)
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_the_gloo_benchmark_refuses_a_single_rank_before_importing_torch(capsys):
    with pytest.raises(SystemExit):
        gloo_bench.parse_args(["--nranks", "1", "--ranks_per_node", "1", "--sizes", "1m",
                               "--init_method", "file:///tmp/x"])  # fmt: skip
    assert "an all_reduce benchmark needs at least 2 ranks" in capsys.readouterr().err


def test_the_gloo_benchmark_checks_node_id_against_the_node_count(capsys):
    with pytest.raises(SystemExit):
        gloo_bench.parse_args(["--nranks", "4", "--ranks_per_node", "2", "--node_id", "2",
                               "--sizes", "1m", "--init_method", "tcp://127.0.0.1:1"])  # fmt: skip
    assert "--node_id 2 is not one of the 2 nodes" in capsys.readouterr().err
