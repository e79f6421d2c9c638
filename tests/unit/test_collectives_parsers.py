"""hccl_demo output parsers on the seeds' real lines, sizes and bandwidth arithmetic."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.collectives import bandwidth
from harness.collectives import hccl_output
from harness.errors import HarnessError

HCCL = Path(__file__).resolve().parents[1] / "data" / "hccl"


def text(name: str) -> str:
    return (HCCL / name).read_text()


def test_seed_single_node_benchmark_lines_give_the_seed_figures():
    report = hccl_output.parse_benchmark(text("seed003_g2_1node_8ranks.txt"), nranks=8)
    (row,) = report.rows
    assert report.test == "all_reduce" and report.form == "benchmark"
    assert row.size_bytes == 33554432 and row.count == 8388608 and row.iterations == 1000
    assert row.busbw_gbps == pytest.approx(258.259144)
    assert row.algbw_gbps == pytest.approx(147.576654)
    assert row.time_us == pytest.approx(33554432 / 147.576654e9 * 1e6)
    assert report.verified is None  # the seed quotes no per-rank check lines


def test_seed_two_node_benchmark_lines_give_the_seed_figures():
    (row,) = hccl_output.parse_benchmark(text("seed003_g2_2nodes_16ranks.txt"), 16).rows
    assert (row.busbw_gbps, row.algbw_gbps) == pytest.approx((205.899352, 109.812988))


@pytest.mark.parametrize(
    "name, nranks",
    [("seed003_g2_1node_8ranks.txt", 8), ("seed003_g2_2nodes_16ranks.txt", 16)],
    ids=["8-ranks", "16-ranks"],
)
def test_the_seed_figures_obey_busbw_equals_algbw_times_2_n_minus_1_over_n(name, nranks):
    (row,) = hccl_output.parse_benchmark(text(name), nranks).rows
    assert row.busbw_gbps / row.algbw_gbps == pytest.approx(
        bandwidth.bus_factor("all_reduce", nranks), rel=1e-6
    )


def test_rank_check_lines_from_the_hccl_demo_readme_mean_verified():
    report = hccl_output.parse_benchmark(text("readme_rank_checks_8ranks.txt"))
    assert report.ranks_checked == 8 and report.verified is True and not report.rows


def test_one_rank_saying_bad_means_not_verified():
    lines = text("readme_rank_checks_8ranks.txt").splitlines()
    lines[2] = lines[2].replace("which is fine.", "which is bad.")  # hccl_rank=1
    report = hccl_output.parse_benchmark("\n".join(lines))
    assert report.verified is False and report.ranks_bad == [1]


def test_older_releases_with_data_size_and_mb_per_s_parse_to_gb_per_s():
    out = (
        "[BENCHMARK] hcclAllReduce(src!=dst, data_size=33554432, count=8388608, dtype=float, "
        "iterations=1000)\n"
        "[BENCHMARK]     NW Bandwidth   : 258259.144 MB/s\n"
        "[BENCHMARK]     Algo Bandwidth : 147576.654 MB/s\n"
    )
    (row,) = hccl_output.parse_benchmark(out, 8).rows
    assert (row.busbw_gbps, row.algbw_gbps) == pytest.approx((258.259144, 147.576654))


def test_a_single_bandwidth_figure_is_the_nw_one_and_algbw_follows_from_the_rank_count():
    out = (
        "[BENCHMARK] hcclAllReduce(src!=dst, count=8388608, dtype=fp32, iterations=1000)\n"
        "[BENCHMARK]     Bandwidth     : 258259.144 MB/s\n"
    )
    (row,) = hccl_output.parse_benchmark(out, 8).rows
    assert row.size_bytes == 8388608 * 4
    assert row.algbw_gbps == pytest.approx(258.259144 / 1.75)


def test_summary_report_gives_one_row_per_size_and_ignores_its_mislabelled_time_column():
    report = hccl_output.parse_summary(text("summary_report_8ranks_size_range.txt"), 8)
    assert report.form == "summary" and report.test == "all_reduce"
    assert [r.size_bytes for r in report.rows] == [2**20 * k for k in (1, 2, 4, 8, 16, 32)]
    last = report.rows[-1]
    assert (last.algbw_gbps, last.busbw_gbps) == pytest.approx((147.576654, 258.259144))
    assert last.iterations == 1000 and last.count == 8388608
    assert last.time_us == pytest.approx(227.37, abs=0.01)  # printed as 0.227 "(us)"


def test_parse_output_prefers_the_summary_table_over_benchmark_blocks():
    both = text("summary_report_8ranks_size_range.txt") + text("seed003_g2_1node_8ranks.txt")
    assert hccl_output.parse_output([both], 8).form == "summary"
    assert hccl_output.parse_output([text("seed003_g2_1node_8ranks.txt")], 8).form == "benchmark"


@pytest.mark.parametrize(
    "name", ["result_csv_8ranks_32m.csv", "result_csv_8ranks_32m_mbps.csv"], ids=["GB/s", "MB/s"]
)
def test_csv_file_reports_the_slowest_rank_per_size(name):
    report = hccl_output.parse_csv(text(name))
    (row,) = report.rows
    assert row.nranks == 8  # counted from the distinct ranks of the file
    assert row.busbw_gbps == pytest.approx(258.259144 - 0.37 * 7)
    assert row.algbw_gbps == pytest.approx(row.busbw_gbps / 1.75)


def test_output_without_figures_gives_no_rows():
    assert hccl_output.parse_output(["hccl_demo: cannot open device"], 8).rows == []


@pytest.mark.parametrize(
    "value, size",
    [("32m", 33554432), ("32M", 33554432), ("33554432", 33554432), ("33554432b", 33554432),
     ("1g", 2**30), ("4k", 4096), (64, 64)],
)  # fmt: skip
def test_sizes_parse_like_run_hccl_demo(value, size):
    assert bandwidth.parse_size(value) == size


def test_a_bad_size_names_itself_and_the_units():
    with pytest.raises(HarnessError, match=r"'32x' is not a number with an optional unit G, M"):
        bandwidth.parse_size("32x")


def test_size_range_doubles_like_size_range_inc():
    assert bandwidth.size_range("1m", "8m") == [2**20, 2**21, 2**22, 2**23]
    assert bandwidth.size_range("1m", "16m", 2) == [2**20, 2**22, 2**24]
    with pytest.raises(HarnessError, match="minimum is larger"):
        bandwidth.size_range("8m", "1m")


def test_sizes_label_with_the_largest_whole_unit():
    assert bandwidth.format_size(2**25) == "32m"
    assert bandwidth.format_size(3 * 2**20) == "3m"
    assert bandwidth.format_size(2048) == "2k"
    assert bandwidth.format_size(1000) == "1000b"


def test_unknown_collective_lists_the_known_ones():
    with pytest.raises(HarnessError, match="unknown collective 'alltoallv'; known: all_reduce"):
        bandwidth.bus_factor("alltoallv", 8)


def test_headline_is_the_largest_message():
    rows = hccl_output.parse_summary(text("summary_report_8ranks_size_range.txt"), 8).rows
    assert bandwidth.headline(rows).size_bytes == 2**25
    with pytest.raises(HarnessError, match="no bandwidth figures"):
        bandwidth.headline([])
