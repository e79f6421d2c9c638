"""`harness` command line: plan a matrix, validate it, read results, and the measurement tools."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.compare import parse_compare_fail
from harness.errors import HarnessError

SUITES_DIR = Path(__file__).resolve().parent.parent / "suites"


def _cmd_plan(args: argparse.Namespace) -> int:
    """Print the plan through pytest, so it is exactly what `pytest suites --plan` shows."""
    import pytest

    argv = [str(SUITES_DIR), "--plan", "-q", "-p", "no:cacheprovider", "--matrix", args.matrix]
    if args.backend:
        argv += ["--backend", args.backend]
    if args.cells:
        argv += ["--cells", args.cells]
    if args.stages:
        argv += ["--stages", args.stages]
    return int(pytest.main(argv))


def _cmd_validate(args: argparse.Namespace) -> int:
    from harness.matrix import load_matrix

    matrix = load_matrix(args.matrix)
    print(f"{matrix.path}: {len(matrix.cells)} cells, backend {matrix.backend}")
    for cell in matrix.cells:
        print(f"  {cell.id}  stages: {', '.join(s.value for s in cell.stages)}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from harness.report.markdown import render_summary
    from harness.results import ResultStore
    from harness.results import read_records

    store = ResultStore(Path(args.results_dir))
    run_id = args.run or store.latest()
    if run_id is None:
        raise HarnessError(f"{args.results_dir}: no runs found (run `make qualify` first)")
    path = store.root / run_id / "results.jsonl"
    if not path.is_file():
        raise HarnessError(f"{path}: no such run; runs: {', '.join(store.runs()) or 'none'}")
    if args.qualification:
        from harness.report import qualification

        run = qualification.load_run(store, run_id)
        history = qualification.earlier_runs(store, run)
        print(qualification.write_report(run, history, path.parent).read_text(), end="")
        return 0
    context = next((r for r in read_records(path) if r.get("kind") == "run"), {})
    print(render_summary(store.load(run_id), str(context.get("matrix_name", "?")), run_id), end="")
    return 0


def _cmd_runs(args: argparse.Namespace) -> int:
    from harness.results import ResultStore

    for run_id in ResultStore(Path(args.results_dir)).runs():
        print(run_id)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from harness.compare import compare
    from harness.compare import render_compare
    from harness.results import ResultStore

    store = ResultStore(Path(args.results_dir))
    runs = store.runs()
    for run_id in (args.base, args.run):
        if run_id not in runs:
            raise HarnessError(
                f"{args.results_dir}: no run {run_id!r} (runs: {', '.join(runs) or 'none'})"
            )
    deltas = compare(store.load(args.base), store.load(args.run), args.compare_fail)
    print(render_compare(deltas, args.base, args.run), end="")
    return 1 if any(d.failure for d in deltas) else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="harness", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    plan = sub.add_parser("plan", help="Print every cell's stages with exact commands; run nothing")
    plan.add_argument("--matrix", default="smoke-cpu", metavar="NAME|PATH")
    plan.add_argument("--backend", choices=("cpu", "gaudi"))
    plan.add_argument("--cells", metavar="GLOBS")
    plan.add_argument("--stages", metavar="STAGES")
    plan.set_defaults(func=_cmd_plan)

    validate = sub.add_parser("validate", help="Load a matrix and list its cells")
    validate.add_argument("--matrix", default="smoke-cpu", metavar="NAME|PATH")
    validate.set_defaults(func=_cmd_validate)

    report = sub.add_parser("report", help="Print the Markdown summary of a run (default: latest)")
    report.add_argument("run", nargs="?", help="Run id (a directory under --results-dir)")
    report.add_argument("--results-dir", default="reports", metavar="DIR")
    report.add_argument(
        "--qualification",
        action="store_true",
        help="the sign-off report instead: verdict, run context, every gate, FP8 against BF16, "
        "emulations, trend over earlier runs (rewrites report.md and trend.png of the run)",
    )
    report.set_defaults(func=_cmd_report)

    comp = sub.add_parser(
        "compare", help="Compare two runs metric by metric; exit 1 on regressions"
    )
    comp.add_argument("base", help="Baseline run id")
    comp.add_argument("run", help="Run id to judge")
    comp.add_argument("--results-dir", default="reports", metavar="DIR")
    comp.add_argument(
        "--compare-fail", type=parse_compare_fail, action="append", default=[], metavar="SPEC"
    )
    comp.set_defaults(func=_cmd_compare)

    runs = sub.add_parser("runs", help="List stored runs, oldest first")
    runs.add_argument("--results-dir", default="reports", metavar="DIR")
    runs.set_defaults(func=_cmd_runs)

    try:
        from harness.measurements.cli import add_subparser
    except ImportError:
        pass
    else:
        add_subparser(sub)

    from harness.history.cli import add_subparser as add_history_subparser

    add_history_subparser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except HarnessError as exc:
        print(f"harness {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
