"""The derivation steps as commands, flags as in vllm-gaudi's step-3/5/6 scripts.

`python -m harness.calibration.tools unify -m SRC -o OUT -r R [-u] [-s]`,
`... postprocess -m SRC -o OUT [-d]`, `... expand -m SRC -o OUT -w N`. They call the
harness's measurement toolkit (`harness.measurements`), which gives the public scripts' values
far faster. The CPU backend runs them as subprocesses so `--plan` shows what really runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.errors import HarnessError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m harness.calibration.tools",
                                     description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="tool", required=True)
    unify = sub.add_parser("unify", help="step 5: unify a rank set to fewer ranks")
    unify.add_argument("-m", "--measurements", required=True, type=Path)
    unify.add_argument("-o", "--out", required=True, type=Path)
    unify.add_argument("-r", "--rank", required=True, type=int)
    unify.add_argument("-u", "--use_expert_paral", action="store_true")
    unify.add_argument("-s", "--skip_unify_scales", action="store_true")
    post = sub.add_parser("postprocess", help="step 3: k/v-cache inputs into the attention matmuls")
    post.add_argument("-m", "--measurements", required=True, type=Path)
    post.add_argument("-o", "--out", required=True, type=Path)
    post.add_argument("-d", "--deepseek", action="store_true")
    expand = sub.add_parser("expand", help="step 6: expand a unified TP1 set to N ranks")
    expand.add_argument("-m", "--measurements", required=True, type=Path)
    expand.add_argument("-o", "--out", required=True, type=Path)
    expand.add_argument("-w", "--target_world_size", required=True, type=int)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from harness import measurements

    try:
        if args.tool == "unify":
            measurements.unify(args.measurements, args.out, ranks=args.rank,
                               expert_parallel=args.use_expert_paral,
                               skip_scales=args.skip_unify_scales)
        elif args.tool == "postprocess":
            measurements.postprocess(args.measurements, args.out, deepseek=args.deepseek)
        else:
            measurements.expand(args.measurements, args.out, args.target_world_size)
    except HarnessError as exc:
        print(f"{args.tool}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
