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
