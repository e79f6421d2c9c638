"""Command line of the measurement tools: ``harness measurements unify|expand|...``.

The flags are those of the public vLLM-Gaudi calibration scripts (step-3 postprocess, step-5
unify, step-6 expand): ``-m``, ``-o``, ``-r``, ``-g``, ``-u``, ``-s``, ``-w``, ``-d`` and their long
spellings, so a procedure's command line works after swapping the program name. One change:
``-o`` is required (the scripts default to the current directory).

Wiring: :func:`add_subparser` adds the ``measurements`` command to a parent parser; every
sub-command sets ``func``, which takes the parsed namespace and returns the exit status.
:func:`main` is the stand-alone entry (``python -m harness.measurements ...``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from harness.errors import MeasurementError
from harness.measurements.check import DEVICES
from harness.measurements.check import check
from harness.measurements.diff import diff
from harness.measurements.expand import expand
from harness.measurements.outcome import Outcome
from harness.measurements.postprocess import postprocess
from harness.measurements.unify import unify

EXIT_OK = 0
EXIT_FAILED = 1  # an operation failed, check found errors, diff found differences
EXIT_UNUSABLE = 2  # check/diff could not read their input (argparse also uses 2)

_EXAMPLES = """\
examples:
  # EP calibration -> one rank -> EP16 (seeds: DeepSeek on 8/16/32 cards)
  %(prog)s unify -m g3/ -o g3-tp1/ -r 1 -u -s
  %(prog)s postprocess -m g3-tp1/ -o g3-tp1-post/ -d
  %(prog)s expand -m g3-tp1-post/ -o g3-ep16/ -w 16
  # TP16 -> TP8, in place, or with explicit card groups
  %(prog)s unify -m g2/ -o g2/ -r 8
  %(prog)s unify -m g2/ -o unified-8x/ -g "0,1--2,3--4,5--6,7--8,9--10,11--12,13--14,15"
  # before serving
  %(prog)s check g3-ep16/ --device g3 --world 16
  %(prog)s diff g3-ep16/ other-ep16/
"""


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of at least 1, got {value}")
    return value


def _io(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "-m", "--measurements", required=True, metavar="DIR", help=f"Directory of the {what}"
    )
    p.add_argument(
        "-o",
        "--out",
        required=True,
        metavar="DIR",
        help="Output directory; written atomically, may equal -m (new files join the old ones)",
    )
    p.add_argument(
        "--prefix", metavar="PREFIX", help="File prefix, when the directory holds several"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="Print where the time went")


def _add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "unify",
        help="Unify W ranks into R (public step-5)",
        description="Max the measurements of groups of ranks: W ranks become R.",
    )
    _io(p, "W-rank measurement set")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument(
        "-r",
        "--rank",
        type=_positive,
        metavar="R",
        help="Target rank count: W %% R == 0 and R < W; groups of consecutive ranks",
    )
    how.add_argument(
        "-g",
        "--groups",
        metavar="GROUPS",
        help='Explicit card groups: "0,1--2,3--..." (ranks by commas, groups by "--")',
    )
    p.add_argument(
        "-u",
        "--use_expert_paral",
        "--expert-parallel",
        dest="expert_parallel",
        action="store_true",
        help="Expert-parallel rules: gather experts and their amax instead of maxing them",
    )
    p.add_argument(
        "-s",
        "--skip_unify_scales",
        "--skip-scales",
        dest="skip_scales",
        action="store_true",
        help="Leave the scale files out",
    )
    p.add_argument(
        "--world",
        type=_positive,
        metavar="W",
        help="Source world size, when the directory holds sets of several sizes",
    )
    p.set_defaults(func=_run_unify)

    p = sub.add_parser(
        "expand",
        help="Expand a unified single-rank set to N ranks (public step-6)",
        description="Give every rank all nodes and its slice of the MoE per-expert amax.",
    )
    _io(p, "unified single-rank set")
    p.add_argument(
        "-w",
        "--target_world_size",
        "--target-world-size",
        dest="target_world",
        type=_positive,
        required=True,
        metavar="N",
        help="Target world size (expert-parallel ranks)",
    )
    p.set_defaults(func=_run_expand)

    p = sub.add_parser(
        "postprocess",
        help="Feed KV-cache ranges to the attention matmuls (public step-3)",
        description="Set matmul_qk/matmul_av input 1 to the k/v-cache input of each attention.",
    )
    _io(p, "measurement set")
    p.add_argument(
        "-d",
        "--deepseek",
        action="store_true",
        help="DeepSeek MLA: both matmuls take the latent cache (latent_cache_k)",
    )
    p.set_defaults(func=_run_postprocess)

    p = sub.add_parser(
        "check",
        help="Find problems in a measurement directory",
        description="Check a measurement directory; exit status 1 when it finds errors.",
    )
    p.add_argument("path", metavar="PATH", help="Measurement directory (or one of its files)")
    p.add_argument(
        "--device",
        choices=DEVICES,
        help="Target Gaudi generation: scale files of another are errors",
    )
    p.add_argument(
        "--world",
        type=_positive,
        metavar="N",
        help="Target world size: a set that cannot serve it is an error",
    )
    p.add_argument("--prefix", metavar="PREFIX", help="Check only this file prefix")
    p.add_argument("--json", action="store_true", help="Print the report as JSON")
    p.set_defaults(func=_run_check)

    p = sub.add_parser(
        "diff",
        help="Compare two measurement sets node by node",
        description="Compare two sets (directories) or files; exit status 1 when they differ.",
    )
    p.add_argument("a", metavar="A", help="First set (directory) or file")
    p.add_argument("b", metavar="B", help="Second set (directory) or file")
    p.add_argument(
        "--kind",
        choices=("ranges", "scales"),
        default="ranges",
        help="Which files to compare. Default: %(default)r",
    )
    p.add_argument(
        "--world", type=_positive, metavar="W", help="World size, when a directory holds several"
    )
    p.add_argument("--prefix", metavar="PREFIX", help="File prefix, when a directory holds several")
    p.add_argument(
        "--top", type=_positive, default=10, metavar="N", help="Nodes to list. Default: %(default)r"
    )
    p.add_argument("--json", action="store_true", help="Print the report as JSON")
    p.set_defaults(func=_run_diff)


def add_subparser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``measurements`` command (with unify, expand, postprocess, check, diff)."""
    p = subparsers.add_parser(
        "measurements",
        help="INC measurement tools: unify, expand, postprocess, check, diff",
        description="INC measurement tools (flags of the public calibration scripts).",
        epilog=_EXAMPLES.replace("%(prog)s", "harness measurements"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="measurements_command", metavar="COMMAND")
    _add_commands(sub)
    p.set_defaults(func=lambda _args: _usage(p))


def _usage(p: argparse.ArgumentParser) -> int:
    p.print_help(sys.stderr)
    return EXIT_UNUSABLE


def _report(outcome: Outcome, verbose: bool) -> None:
    print(outcome.summary())
    for note in outcome.notes:
        print(f"  {note}")
    if verbose:
        phases = ", ".join(f"{k} {v:.3f}s" for k, v in outcome.timings.seconds.items())
        print(f"  time: {phases}")


def _operation(run: Callable[[], Outcome], verbose: bool) -> int:
    try:
        outcome = run()
    except MeasurementError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    _report(outcome, verbose)
    return EXIT_OK


def _run_unify(args: argparse.Namespace) -> int:
    return _operation(
        lambda: unify(
            args.measurements,
            args.out,
            ranks=args.rank,
            groups=args.groups,
            expert_parallel=args.expert_parallel,
            skip_scales=args.skip_scales,
            world=args.world,
            prefix=args.prefix,
        ),
        args.verbose,
    )


def _run_expand(args: argparse.Namespace) -> int:
    return _operation(
        lambda: expand(args.measurements, args.out, args.target_world, prefix=args.prefix),
        args.verbose,
    )


def _run_postprocess(args: argparse.Namespace) -> int:
    return _operation(
        lambda: postprocess(
            args.measurements, args.out, deepseek=args.deepseek, prefix=args.prefix
        ),
        args.verbose,
    )


def _run_check(args: argparse.Namespace) -> int:
    try:
        report = check(args.path, device=args.device, world=args.world, prefix=args.prefix)
    except MeasurementError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    print(report.to_json() if args.json else report.render())
    return EXIT_OK if report.ok else EXIT_FAILED


def _run_diff(args: argparse.Namespace) -> int:
    try:
        report = diff(
            args.a, args.b, kind=args.kind, top=args.top, world=args.world, prefix=args.prefix
        )
    except MeasurementError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    print(report.to_json() if args.json else report.render())
    return EXIT_OK if report.identical else EXIT_FAILED


def build_parser(prog: str = "python -m harness.measurements") -> argparse.ArgumentParser:
    """The stand-alone parser (the sub-commands at top level)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="INC measurement tools (flags of the public calibration scripts).",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="measurements_command", metavar="COMMAND", required=True)
    _add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a measurement tool; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("interrupted: the output directory is unchanged", file=sys.stderr)
        return 130
