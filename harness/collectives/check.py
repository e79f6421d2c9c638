"""Check an hccl_demo log run by hand: figures per size, the data-check verdict, the gates.

Validation engineers run hccl_demo by hand before anything else; this reads any output form
the harness parses (hccl_output.py: [BENCHMARK] blocks, the summary report, the result CSV,
rank check lines) without a whole run:

    python -m harness.collectives.check LOG... [--csv FILE] --device g2 --nodes 2 \
        [--matrix deepseek-r1-multinode --cell 'deepseek-r1-0528/g2-n2/*']

Exit status: 0 all good, 1 a bad rank or a failed gate, 2 no figures in the input.
The same as `harness collectives check LOG... --device g2 ...`.
"""

from __future__ import annotations

import argparse
import fnmatch
import sys
from collections.abc import Sequence
from pathlib import Path

from harness.collectives.bandwidth import headline
from harness.collectives.hccl_output import HcclReport
from harness.collectives.hccl_output import parse_csv
from harness.collectives.hccl_output import parse_output
from harness.devices import DEVICES
from harness.devices import GAUDI_DEVICES
from harness.gates import evaluate
from harness.matrix import load_matrix

CARDS_PER_NODE = {name: DEVICES[name].cards_per_node for name in GAUDI_DEVICES}
METRICS = ("algo_bandwidth_gbps", "nw_bandwidth_gbps")  # the gaudi backend's metric names


def read_report(logs: Sequence[Path], csv: Path | None, nranks: int) -> HcclReport:
    """The logs' figures (summary table, else benchmark blocks); the CSV when they have none.
    Rank checks always come from the logs."""
    report = parse_output([p.read_text(errors="replace") for p in logs], nranks)
    if not report.rows and csv is not None:
        from_csv = parse_csv(csv.read_text(errors="replace"), nranks)
        from_csv.ranks_checked, from_csv.ranks_bad = report.ranks_checked, report.ranks_bad
        report = from_csv
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="harness collectives check", description=__doc__)
    parser.add_argument("logs", nargs="*", type=Path, help="hccl_demo output of each node")
    parser.add_argument("--csv", type=Path, help="the --result_csv (or older --csv_path) file")
    parser.add_argument("--device", choices=sorted(CARDS_PER_NODE), required=True)
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--ranks", type=int, help="default: every card of the nodes")
    parser.add_argument("--matrix", help="apply this matrix's collectives gates")
    parser.add_argument("--cell", help="cell id (glob) whose gates apply, with --matrix")
    args = parser.parse_args(argv)
    if not args.logs and args.csv is None:
        parser.error("give hccl_demo log file(s) and/or --csv")
    nranks = args.ranks or args.nodes * CARDS_PER_NODE[args.device]
    report = read_report(args.logs, args.csv, nranks)
    if not report.rows:
        print("no bandwidth figures found (is it hccl_demo output?)", file=sys.stderr)
        return 2
    print(f"{report.test}, {nranks} ranks ({report.form}):")
    print(f"  {'size':>10}  {'algo GB/s':>12}  {'NW GB/s':>12}")
    for row in report.rows:
        print(f"  {row.size_label:>10}  {row.algbw_gbps:12.3f}  {row.busbw_gbps:12.3f}")
    status = 0
    if report.verified is False:
        print(f"data check: BAD on rank(s) {', '.join(map(str, report.ranks_bad))}")
        status = 1
    elif report.verified:
        print(f"data check: fine on {report.ranks_checked} rank line(s)")
    else:
        print("data check: not printed")
    if args.matrix:
        status = max(status, _gates(args.matrix, args.cell, report))
    return status


def _gates(matrix: str, cell_glob: str | None, report: HcclReport) -> int:
    cells = [c for c in load_matrix(matrix).cells if fnmatch.fnmatchcase(c.id, cell_glob or "*")]
    if not cells:
        print(f"{matrix}: no cell matches {cell_glob!r}", file=sys.stderr)
        return 1
    top = headline(report.rows)
    metrics = {METRICS[0]: top.algbw_gbps, METRICS[1]: top.busbw_gbps}
    status = 0
    for cell in cells:
        for outcome in evaluate(cell.id, "collectives", metrics, cell.gates):
            mark = "PASS" if outcome.passed else "FAIL"
            print(f"gate {mark} {outcome.message}")
            status = status if outcome.passed else 1
    return status


if __name__ == "__main__":
    sys.exit(main())
