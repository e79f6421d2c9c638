"""Parsers for HabanaAI/hccl_demo output: `[BENCHMARK]` blocks, the summary table of
`--size_range` runs, the per-rank result CSV, and the per-rank data checks.

Current layout (hccl_demo.cpp @f623d69): `describeStat` (lines 666-727) prints the
`[BENCHMARK]` block and appends `test,rank,dtype,size,loop,<nw> GB/s,<algo> GB/s` to the
`--result_csv` file (run_hccl_demo.py:151 passes it as HCCL_DEMO_RESULT_CSV); `printReport`
(lines 900-975) prints `[BANDWIDTH SUMMARY REPORT]` with columns `size count type [redop] time
algoBW nw_bw`, every value with its unit (formatTime "x ms", formatBW "x GB/s", common.h:241-253);
the data check (line 627-655) is `rank=N size=S <dtype> Input Buffer [...] ... which is fine.`.
Older releases (before cccd1e8, 2024-12-30): `--csv_path`, a 6-column CSV without algo
bandwidth, `[SUMMARY REPORT]` with `algo_bw`, and `hccl_rank=N` check lines; all still parsed.

Formats (hccl_demo.cpp `describe_stat` / `print_report`; the seeds' real lines):

    [BENCHMARK] hcclAllReduce(dataSize=33554432, count=8388608, dtype=float, iterations=1000)
    [BENCHMARK]     NW Bandwidth   : 258.259144 GB/s
    [BENCHMARK]     Algo Bandwidth : 147.576654 GB/s

Older releases name the size `data_size=` (with `src!=dst, `), print MB/s, or print a single
`Bandwidth : <x> MB/s` (already the NW figure). The summary table has the columns
`size count type [redop] time algo_bw nw_bw`; its time column is labelled `(us)` but the source
prints seconds x 1000 (milliseconds), so time is derived here from size / algo_bw instead.
The CSV file has no header: `test,rank,dtype,size,loop,<nw bandwidth> GB/s|MB/s`, one line
per rank and size, appended (give every run a fresh path).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import field

from harness.collectives.bandwidth import BandwidthRow
from harness.collectives.bandwidth import bus_factor
from harness.collectives.bandwidth import slowest_per_size

_OPS = {
    "hcclallreduce": "all_reduce",
    "hcclallgather": "all_gather",
    "hcclreducescatter": "reduce_scatter",
    "hcclbroadcast": "broadcast",
    "hcclreduce": "reduce",
    "hcclalltoall": "all2all",
    "hcclall2all": "all2all",
    "hcclsendrecv": "send_recv",
}
_DTYPE_BYTES = {"float": 4, "fp32": 4, "float32": 4, "bfloat16": 2, "bf16": 2}
_SCALED = ("all_reduce", "all_gather", "reduce_scatter", "all2all")
_TO_GBPS = {"gb/s": 1.0, "mb/s": 1e-3, "kb/s": 1e-6, "b/s": 1e-9}

_HEADER = re.compile(r"\[BENCHMARK\]\s+(hccl\w+)\((.*)\)\s*$")
_FIGURE = re.compile(
    r"\[BENCHMARK\]\s+(NW Bandwidth|Algo Bandwidth|Bandwidth)\s*:\s*([\d.]+)\s*([KMG]?B/s)", re.I
)
_CHECK = re.compile(r"(?:hccl_)?rank=(\d+).*which is (fine|bad)\.", re.I)
_BW_VALUE = re.compile(r"([\d.]+)\s*([KMG]?B/s)", re.I)
_SUMMARY_ID = re.compile(r"collective=(\w+),\s*iterations=(\d+)")


@dataclass
class HcclReport:
    """What one hccl_demo run printed: bandwidth per size and whether the data checks passed."""

    rows: list[BandwidthRow] = field(default_factory=list)
    test: str = "all_reduce"
    form: str = ""  # "benchmark", "summary" or "csv"
    ranks_checked: int = 0
    ranks_bad: list[int] = field(default_factory=list)

    @property
    def verified(self) -> bool | None:
        """True when every rank said 'which is fine', False if one said 'bad', None if silent."""
        if self.ranks_bad:
            return False
        return True if self.ranks_checked else None


def _gbps(value: str, unit: str) -> float:
    return float(value) * _TO_GBPS[unit.lower()]


def _params(text: str) -> dict[str, str]:
    out = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if sep:
            out[key.strip().lower()] = value.strip()
    return out


def _size(params: dict[str, str]) -> int:
    for key in ("datasize", "data_size", "size"):
        if key in params:
            return int(params[key])
    count = int(params.get("count", "0"))
    return count * _DTYPE_BYTES.get(params.get("dtype", "float").lower(), 4)


def parse_benchmark(text: str, nranks: int = 0) -> HcclReport:
    """Every `[BENCHMARK]` block of `text` (one per size), plus the per-rank data checks."""
    report = HcclReport(form="benchmark")
    current: dict[str, object] | None = None
    pending: list[dict[str, object]] = []
    for line in text.splitlines():
        header = _HEADER.search(line)
        if header:
            params = _params(header.group(2))
            current = {
                "test": _OPS.get(header.group(1).lower(), header.group(1)),
                "size": _size(params),
                "count": int(params.get("count", "0")),
                "dtype": params.get("dtype", "float"),
                "iterations": int(params.get("iterations", "0")),
            }
            pending.append(current)
            continue
        figure = _FIGURE.search(line)
        if figure and current is not None:
            name = figure.group(1).lower()
            key = {"nw bandwidth": "nw", "algo bandwidth": "algo", "bandwidth": "nw"}[name]
            current[key] = _gbps(figure.group(2), figure.group(3))
            continue
        _note_check(report, line)
    for block in pending:
        row = _row_from_block(block, nranks)
        if row is not None:
            report.rows.append(row)
            report.test = str(block["test"])
    return report


def _row_from_block(block: dict[str, object], nranks: int) -> BandwidthRow | None:
    nw = block.get("nw")
    algo = block.get("algo")
    if nw is None and algo is None:
        return None
    test = str(block["test"])
    if algo is None and nranks:
        algo = float(nw) / bus_factor(test, nranks)  # type: ignore[arg-type]
    if nw is None and nranks:
        nw = float(algo) * bus_factor(test, nranks)  # type: ignore[arg-type]
    size = int(block["size"])  # type: ignore[call-overload]
    algo_f = float(algo) if algo is not None else float("nan")  # type: ignore[arg-type]
    return BandwidthRow(
        size_bytes=size,
        algbw_gbps=algo_f,
        busbw_gbps=float(nw) if nw is not None else float("nan"),  # type: ignore[arg-type]
        nranks=nranks,
        count=int(block["count"]),  # type: ignore[call-overload]
        dtype=str(block["dtype"]),
        iterations=int(block["iterations"]),  # type: ignore[call-overload]
        time_us=size / (algo_f * 1e9) * 1e6 if algo_f and algo_f == algo_f else None,
        source="hccl_demo [BENCHMARK]",
    )


def _note_check(report: HcclReport, line: str) -> None:
    check = _CHECK.search(line)
    if check:
        report.ranks_checked += 1
        if check.group(2).lower() == "bad":
            report.ranks_bad.append(int(check.group(1)))


def parse_summary(text: str, nranks: int = 0) -> HcclReport:
    """The `[SUMMARY REPORT]` table a `--size_range` run prints (on rank 0's node)."""
    report = HcclReport(form="summary")
    lines = text.splitlines()
    for line in lines:
        _note_check(report, line)
    start = next((i for i, line in enumerate(lines)
                  if "[SUMMARY REPORT]" in line or "[BANDWIDTH SUMMARY REPORT]" in line), None)
    if start is None:
        return report
    iterations = 0
    header: list[str] | None = None
    for line in lines[start + 1 :]:
        ident = _SUMMARY_ID.search(line)
        if ident:
            report.test, iterations = ident.group(1), int(ident.group(2))
            continue
        cols = line.split()
        if header is None:
            if cols[:2] == ["size", "count"]:
                header = cols
            continue
        if not cols or cols[0].startswith("("):
            if report.rows and not cols:
                break
            continue
        if not cols[0].isdigit():
            break
        bandwidths = _BW_VALUE.findall(line)
        if len(bandwidths) == 2:  # current layout: "<algo> GB/s <nw> GB/s" (algoBW, nw_bw)
            (algo_v, algo_u), (nw_v, nw_u) = bandwidths
            algo, nw = _gbps(algo_v, algo_u), _gbps(nw_v, nw_u)
        elif len(cols) == len(header):
            values = dict(zip(header, cols, strict=True))
            algo, nw = float(values["algo_bw"]), float(values["nw_bw"])
        else:
            break
        size = int(cols[0])
        report.rows.append(
            BandwidthRow(
                size_bytes=size,
                algbw_gbps=algo,
                busbw_gbps=nw,
                nranks=nranks,
                count=int(cols[1]),
                dtype=cols[2] if len(cols) > 2 else "float",
                iterations=iterations,
                time_us=size / (algo * 1e9) * 1e6 if algo > 0 else None,
                source="hccl_demo [SUMMARY REPORT]",
            )
        )
    return report


def parse_csv(text: str, nranks: int = 0) -> HcclReport:
    """The result CSV: per-rank lines, 7 columns with algo bandwidth (`--result_csv`), or 6
    (older `--csv_path`, algo derived); the slowest rank sets each size."""
    report = HcclReport(form="csv")
    raw: list[tuple[str, int, str, int, int, float, float | None]] = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) not in (6, 7) or not parts[1].isdigit():
            continue
        value, _, unit = parts[5].partition(" ")
        algo_bw = None
        if len(parts) == 7:
            a_value, _, a_unit = parts[6].partition(" ")
            algo_bw = _gbps(a_value, a_unit)
        raw.append((parts[0], int(parts[1]), parts[2], int(parts[3]), int(parts[4]),
                    _gbps(value, unit), algo_bw))
    ranks_by_size: dict[int, set[int]] = {}
    for _test, rank, _dtype, size, _loop, _nw, _algo in raw:
        ranks_by_size.setdefault(size, set()).add(rank)
    rows = []
    for test, _rank, dtype, size, loop, nw, algo_bw in raw:
        n = nranks or len(ranks_by_size[size])
        algo = algo_bw if algo_bw is not None else (
            nw / bus_factor(test, n) if test in _SCALED else nw
        )
        rows.append(
            BandwidthRow(
                size_bytes=size,
                algbw_gbps=algo,
                busbw_gbps=nw,
                nranks=n,
                count=size // _DTYPE_BYTES.get(dtype.lower(), 4),
                dtype=dtype,
                iterations=loop,
                time_us=size / (algo * 1e9) * 1e6 if algo > 0 else None,
                source="hccl_demo result CSV",
            )
        )
        report.test = test
    report.rows = slowest_per_size(rows)
    return report


def parse_output(texts: Iterable[str], nranks: int = 0) -> HcclReport:
    """Node outputs of one run: the summary table if there is one, else the benchmark blocks."""
    text = "\n".join(texts)
    summary = parse_summary(text, nranks)
    if summary.rows:
        return summary
    return parse_benchmark(text, nranks)
