"""hccl_demo output in its current layout (HabanaAI/hccl_demo main @f623d69), written from
hccl_demo.cpp / common.h (see tests/data/hccl/README.md), next to the older samples."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.backends.gaudi import GaudiBackend
from harness.cell import Stage
from harness.collectives.hccl_output import parse_csv
from harness.collectives.hccl_output import parse_output
from harness.collectives.launch import CommandOutput
from harness.errors import StageError
from harness.matrix import load_matrix
from harness.stages import StageContext
from harness.stages import collectives as stage

HCCL = Path(__file__).resolve().parents[1] / "data" / "hccl"
SUMMARY = HCCL / "bandwidth_summary_report_f623d69.txt"


def test_the_bandwidth_summary_report_with_units_gives_algo_and_nw_per_size() -> None:
    report = parse_output([SUMMARY.read_text()], 8)
    assert report.form == "summary" and report.test == "all_reduce"
    assert [r.size_bytes for r in report.rows] == [1048576, 4194304, 33554432]
    top = report.rows[-1]
    assert top.algbw_gbps == pytest.approx(147.576654)
    assert top.busbw_gbps == pytest.approx(258.259144)
    assert top.iterations == 1000 and top.count == 8388608 and top.dtype == "float"


def test_current_rank_check_lines_are_counted_and_a_bad_one_is_named() -> None:
    text = SUMMARY.read_text()
    assert parse_output([text], 8).ranks_checked == 8
    assert parse_output([text], 8).verified is True
    bad = text.replace("rank=5 size=33554432 <float> Input Buffer [6 6 6 ...] Output Buffer "
                       "[36 36 36 ...] which is fine.", "rank=5 size=33554432 <float> Input "
                       "Buffer [6 6 6 ...] Output Buffer [35 36 36 ...] which is bad.")
    report = parse_output([bad], 8)
    assert report.verified is False and report.ranks_bad == [5]


def test_the_seven_column_result_csv_reads_algo_bandwidth_as_written() -> None:
    report = parse_csv((HCCL / "result_csv_7col_f623d69.csv").read_text(), 8)
    (row,) = report.rows  # the slowest of the 8 ranks
    assert row.busbw_gbps == pytest.approx(258.259144 - 7 * 0.37)
    assert row.algbw_gbps == pytest.approx((258.259144 - 7 * 0.37) / 1.75, abs=1e-6)
    old = parse_csv((HCCL / "result_csv_8ranks_32m.csv").read_text(), 8)  # 6 columns
    assert old.rows and old.rows[0].algbw_gbps == pytest.approx(old.rows[0].busbw_gbps / 1.75)


def test_a_bad_rank_fails_the_collectives_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real stage function on the node log a bad rank printed (no hccl_demo here: the
    launch is replaced by the log it would have written)."""
    cell = next(c for c in load_matrix("nightly-g2").cells
                if c.id == "llama-3.1-8b/g2/tp1/bf16-kv-auto")
    backend = GaudiBackend()
    (cmd,) = backend.plan(cell, Stage.COLLECTIVES, tmp_path)
    bad = SUMMARY.read_text().replace("[8 8 8 ...] Output Buffer [36 36 36 ...] which is fine.",
                                      "[8 8 8 ...] Output Buffer [0 0 0 ...] which is bad.")
    log = tmp_path / "node0.log"
    log.write_text(bad)
    monkeypatch.setattr(stage, "_run_all", lambda ctx: [CommandOutput(cmd, 0, log)])
    ctx = StageContext(cell, Stage.COLLECTIVES, backend, tmp_path, tmp_path)
    with pytest.raises(StageError, match="gave wrong data"):
        stage.run(ctx)
    assert ctx.recorder.metrics["data_verified"] is False


def test_the_checker_reads_a_hand_run_log_and_applies_the_matrix_gates(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from harness.collectives.check import main

    two_nodes = str(HCCL / "seed003_g2_2nodes_16ranks.txt")
    assert main([two_nodes, "--device", "g2", "--nodes", "2", "--matrix",
                 "deepseek-r1-multinode", "--cell", "deepseek-r1-0528/g2-n2/*"]) == 0
    out = capsys.readouterr().out
    assert "109.813       205.899" in out and out.count("gate PASS") == 2
    # the same two-node figure against a one-node gate (258 - 26) fails
    assert main([two_nodes, "--device", "g2", "--nodes", "2", "--matrix", "nightly-g2",
                 "--cell", "llama-3.1-8b/g2/tp1/bf16-kv-auto"]) == 1
    assert "gate FAIL" in capsys.readouterr().out


def test_the_checker_fails_on_a_bad_rank_and_reads_a_csv_when_the_log_has_no_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    from harness.collectives.check import main

    bad = tmp_path / "node0.log"
    bad.write_text(SUMMARY.read_text().replace(
        "[3 3 3 ...] Output Buffer [36 36 36 ...] which is fine.",
        "[3 3 3 ...] Output Buffer [1 36 36 ...] which is bad."))
    assert main([str(bad), "--device", "g2"]) == 1
    assert "data check: BAD on rank(s) 2" in capsys.readouterr().out
    checks_only = tmp_path / "checks.log"
    checks_only.write_text("".join(
        line + "\n" for line in SUMMARY.read_text().splitlines() if line.startswith("rank=")))
    assert main([str(checks_only), "--csv", str(HCCL / "result_csv_7col_f623d69.csv"),
                 "--device", "g2"]) == 0
    out = capsys.readouterr().out
    assert "(csv)" in out and "data check: fine on 8 rank line(s)" in out
    assert main([str(tmp_path / "checks.log"), "--device", "g3"]) == 2


def test_the_placement_covers_every_node_the_collectives_commands_name() -> None:
    """stages/collectives.py asks ray_placement(cell, cell.nodes) and runs command.node in that
    bundle (collectives/launch.py run_on_nodes): the 405B TP8 cell's node-1 command needs two."""
    cell = next(c for c in load_matrix("nightly-g2").cells
                if c.id == "llama-3.1-405b/g2/tp8/fp8-kv-fp8_inc")
    backend = GaudiBackend()
    nodes = {c.node for c in backend.plan(cell, Stage.COLLECTIVES, Path("/w"))}
    placement = backend.ray_placement(cell, cell.nodes)
    assert nodes == {0, 1} and placement.nodes == 2 and len(placement.bundles) == 2
