"""`harness` command line: plan a matrix, validate it, read results, and the measurement tools."""

from __future__ import annotations

import argparse
import fnmatch
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import HarnessError
from harness.options import parse_compare_check

if TYPE_CHECKING:
    from harness.cell import Cell
    from harness.cell import Stage
    from harness.matrix import Matrix

SUITES_DIR = Path(__file__).resolve().parent.parent / "suites"


def _cmd_plan(args: argparse.Namespace) -> int:
    """Print the plan through pytest, so it is exactly what `pytest suites --plan` shows;
    `--json`: the same plan as data (one record per cell, argv lists) for users' tooling."""
    if args.json:
        return _plan_json(args)
    import pytest

    argv = [str(SUITES_DIR), "--plan", "-q", "-p", "no:cacheprovider", "--matrix", args.matrix]
    if args.backend:
        argv += ["--backend", args.backend]
    if args.cells:
        argv += ["--cells", args.cells]
    if args.stages:
        argv += ["--stages", args.stages]
    return int(pytest.main(argv))


def _selection(args: argparse.Namespace) -> tuple[Matrix, list[Cell], tuple[Stage, ...] | None]:
    """The matrix, the cells --cells selects and the --stages asked for (None: all); a glob
    or stage list that selects nothing is an error naming it."""
    from harness.matrix import load_matrix
    from harness.options import check_selection
    from harness.options import parse_globs
    from harness.options import parse_stages

    matrix = load_matrix(args.matrix)
    try:
        globs = parse_globs(args.cells) if args.cells else None
        stages = parse_stages(args.stages) if args.stages else None
    except argparse.ArgumentTypeError as exc:
        raise HarnessError(str(exc)) from None
    check_selection(matrix, globs, stages)
    cells = [c for c in matrix.cells if not globs or any(fnmatch.fnmatchcase(c.id, g)
                                                         for g in globs)]
    return matrix, cells, stages


def _plan_json(args: argparse.Namespace) -> int:
    from harness import backends
    from harness.plan import render_plan_json

    matrix, cells, stages = _selection(args)
    backend = backends.get(args.backend or matrix.backend)
    pairs = [(c, s) for c in cells for s in c.stages if stages is None or s in stages]
    print(render_plan_json(pairs, backend, Path("reports") / "plan"))
    return 0


def _cmd_collectives(args: argparse.Namespace) -> int:
    from harness.collectives import check

    return check.main(args.args)


def _cmd_validate(args: argparse.Namespace) -> int:
    matrix, cells, _ = _selection(args)
    print(f"{matrix.path}: {len(matrix.cells)} cells, backend {matrix.backend}")
    if args.cells:
        print(f"  --cells {args.cells}: {len(cells)} of them")
    for cell in cells:
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
    if args.html:
        from harness.report.html import write_html
        from harness.report.qualification import earlier_runs
        from harness.report.qualification import load_run

        try:
            run = load_run(store, run_id)
            print(write_html(run, earlier_runs(store, run), path.parent))
        except OSError as exc:
            raise HarnessError(f"{path.parent}: cannot read or write the report ({exc})") from None
        return 0
    if args.qualification:
        from harness.report import qualification

        run = qualification.load_run(store, run_id)
        history = qualification.earlier_runs(store, run)
        from harness.workplan.figures import units_section

        units = units_section(read_records(path))
        print(qualification.write_report(run, history, path.parent, (), units).read_text(), end="")
        return 0
    context = next((r for r in read_records(path) if r.get("kind") == "run"), {})
    print(render_summary(store.load(run_id), str(context.get("matrix_name", "?")), run_id), end="")
    return 0


def _cmd_dashboard(args: argparse.Namespace) -> int:
    from harness.report.dashboard import DEFAULT_METRICS
    from harness.report.dashboard import build_dashboard
    from harness.report.dashboard_source import default_change_points
    from harness.report.dashboard_source import open_source

    source = open_source(args.db, Path(args.results_dir))
    metrics = args.metrics.split(",") if args.metrics else DEFAULT_METRICS
    index = build_dashboard(source, Path(args.output), args.cells, metrics,
                            default_change_points())
    print(index)
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
    from harness.options import compare_fail_problem

    problem = compare_fail_problem(args.compare_fail, store.root, args.base)
    if problem:
        raise HarnessError(problem)
    deltas = compare(store.load(args.base), store.load(args.run), args.compare_fail)
    print(render_compare(deltas, args.base, args.run), end="")
    return 1 if any(d.failure for d in deltas) else 0


def _cmd_leftovers(args: argparse.Namespace) -> int:
    """Processes of crashed runs (harness gone, group left): list them, or stop them."""
    from harness import process_registry

    directory = Path(args.dir) if args.dir else None
    if args.stop:
        stopped = process_registry.reap_leftovers(directory)
        for lo in stopped:
            print(lo.describe())
        print(f"{len(stopped)} leftover group(s) stopped")
        return 0
    found = [lo for lo in process_registry.find_leftovers(directory) if lo.pids]
    for lo in found:
        print(f"group {lo.pgid} (pids {', '.join(map(str, lo.pids))}) of crashed "
              f"{'run ' + lo.run_id if lo.run_id else f'harness pid {lo.owner_pid}'}: "
              f"{' '.join(lo.argv)[:120]}")
    print(f"{len(found)} leftover group(s); `harness leftovers --stop` stops them")
    return 0


def _cmd_units(args: argparse.Namespace) -> int:
    """The work units a `pytest -n` run would plan on `--nodes` nodes, in simulated order."""
    import json

    from harness.devices import device
    from harness.workplan.plan import build_plan
    from harness.workplan.render import render
    from harness.workplan.render import units_report

    _, cells, stages = _selection(args)
    cards = args.cards
    if cards is None:  # a Gaudi node's cards, or the cpu backend's local Ray node
        from harness.backends.cpu.preflight import RAY_NODE_CPUS

        cpu = cells[0].device == "cpu"
        cards = RAY_NODE_CPUS if cpu else device(cells[0].device).cards_per_node
    report = units_report(build_plan(cells, args.nodes, cards, stages))
    print(json.dumps(report, indent=1) if args.json else render(report))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="harness", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    plan = sub.add_parser("plan", help="Print every cell's stages with exact commands; run nothing")
    plan.add_argument("--matrix", default="smoke-cpu", metavar="NAME|PATH")
    plan.add_argument("--backend", choices=("cpu", "gaudi"))
    plan.add_argument("--cells", metavar="GLOBS")
    plan.add_argument("--stages", metavar="STAGES")
    plan.add_argument("--json", action="store_true", help="the plan as JSON records, per cell")
    plan.set_defaults(func=_cmd_plan)

    units = sub.add_parser(
        "units", help="The work units `pytest -n` would run on a cluster, in simulated order"
    )
    units.add_argument("--matrix", default="smoke-cpu", metavar="NAME|PATH")
    units.add_argument("--nodes", type=int, default=1, help="nodes of the cluster (default 1)")
    units.add_argument("--cards", type=int, help="cards per node (default: the device's)")
    units.add_argument("--cells", metavar="GLOBS")
    units.add_argument("--stages", metavar="STAGES")
    units.add_argument("--json", action="store_true", help="the units as JSON")
    units.set_defaults(func=_cmd_units)

    coll = sub.add_parser(
        "collectives", help="check hccl_demo output run by hand: `collectives check LOG...`"
    )
    coll.add_argument("action", choices=("check",))
    coll.add_argument("args", nargs=argparse.REMAINDER, help="see `collectives check --help`")
    coll.set_defaults(func=_cmd_collectives)

    validate = sub.add_parser("validate", help="Load a matrix and list its cells")
    validate.add_argument("--matrix", default="smoke-cpu", metavar="NAME|PATH")
    validate.add_argument("--cells", metavar="GLOBS", help="check that these globs select cells")
    validate.add_argument("--stages", metavar="STAGES", help="check that the cells run these")
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
    report.add_argument(
        "--html",
        action="store_true",
        help="write the run's report.html (self-contained, opens offline) and print its path",
    )
    report.set_defaults(func=_cmd_report)

    comp = sub.add_parser(
        "compare", help="Compare two runs metric by metric; exit 1 on regressions"
    )
    comp.add_argument("base", help="Baseline run id")
    comp.add_argument("run", help="Run id to judge")
    comp.add_argument("--results-dir", default="reports", metavar="DIR")
    comp.add_argument(
        "--compare-fail", type=parse_compare_check, action="append", default=[], metavar="SPEC"
    )
    comp.set_defaults(func=_cmd_compare)

    dash = sub.add_parser(
        "dashboard", help="Write a static history site (runs by matrix, trends) to a directory"
    )
    dash.add_argument("-o", "--output", required=True, metavar="DIR")
    dash.add_argument("--results-dir", default="reports", metavar="DIR")
    dash.add_argument("--db", metavar="URL", help="read the history database instead")
    dash.add_argument("--cells", default="*", metavar="GLOB")
    dash.add_argument("--metrics", metavar="GLOBS", help="stage.metric globs, comma-separated")
    dash.set_defaults(func=_cmd_dashboard)

    runs = sub.add_parser("runs", help="List stored runs, oldest first")
    runs.add_argument("--results-dir", default="reports", metavar="DIR")
    runs.set_defaults(func=_cmd_runs)

    left = sub.add_parser(
        "leftovers", help="Processes crashed runs left behind (verified, never by name)"
    )
    left.add_argument("--stop", action="store_true", help="stop them (SIGTERM, then SIGKILL)")
    left.add_argument("--dir", metavar="DIR", help="the process records (default: per user)")
    left.set_defaults(func=_cmd_leftovers)

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
    except BrokenPipeError:  # `harness plan --json | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
