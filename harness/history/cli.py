"""`harness history import|show`: load runs into the history database and read series from it.

Wiring: :func:`add_subparser` adds the `history` command to harness's parser (harness/cli.py).
"""

from __future__ import annotations

import argparse
import glob
from pathlib import Path

_EXAMPLES = """\
examples:
  %(prog)s import reports/*
  %(prog)s show --cell 'llama*/g2/*' --metric throughput.output_throughput@c32 --last 30
  %(prog)s show --cell '*' --metric accuracy.exact_match_strict --plot acc.png
  %(prog)s import reports/* --db postgresql://ci@db-host/harness
"""


def _default_db() -> str:
    from harness.history.url import default_url

    return default_url(Path("reports"))


def _add_db(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        metavar="URL",
        default=None,
        help="History database: a SQLite path or postgresql://USER@HOST/DB. "
        "Default: reports/history.sqlite",
    )


def _cmd_import(args: argparse.Namespace) -> int:
    from harness.history.importer import import_runs
    from harness.history.store import History

    paths = []
    for text in args.paths:
        matches = sorted(glob.glob(text))
        paths += [Path(m) for m in matches] if matches else [Path(text)]
    history = History.open(args.db or _default_db())
    try:
        summary = import_runs(history, paths)
    finally:
        history.close()
    print(summary.render())
    return 1 if summary.problems else 0


def _cmd_show(args: argparse.Namespace) -> int:
    from harness.history.show import plot_series
    from harness.history.show import render_series
    from harness.history.store import History
    from harness.history.url import require_existing

    url = args.db or _default_db()
    require_existing(url, "load runs first with `harness history import reports/*` (or give --db)")
    history = History.open(url)
    try:
        found = history.series(args.cell, args.metric)
    finally:
        history.close()
    print(render_series(found, args.metric, args.last), end="")
    if args.plot:
        shown = {c: p[-args.last:] if args.last else p for c, p in found.items()}
        print(f"plot: {plot_series(shown, args.metric, Path(args.plot))}")
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--last {text!r}: not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"--last {text!r}: must be at least 1")
    return value


def add_subparser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `history import` and `history show` to a parent parser's subcommands."""
    history = sub.add_parser(
        "history",
        help="History database: import runs, show a metric over runs",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    hsub = history.add_subparsers(dest="history_command", required=True)

    imp = hsub.add_parser("import", help="Load runs (reports/<run> or results.jsonl); idempotent")
    imp.add_argument("paths", nargs="+", metavar="PATH", help="Run directories or results.jsonl")
    _add_db(imp)
    imp.set_defaults(func=_cmd_import)

    show = hsub.add_parser("show", help="Print a metric's series per cell and its change points")
    show.add_argument("--cell", required=True, metavar="GLOB", help="Cell id glob, e.g. 'llama*'")
    show.add_argument(
        "--metric", required=True, metavar="NAME",
        help="<stage>.<metric>, e.g. throughput.output_throughput@c32 (a bare name: any stage)",
    )
    show.add_argument("--last", type=_positive, default=None, metavar="N",
                      help="Only the last N runs of each cell. Default: all")
    show.add_argument("--plot", metavar="FILE", help="Also write a PNG of the series")
    _add_db(show)
    show.set_defaults(func=_cmd_show)
