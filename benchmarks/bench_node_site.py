"""What starting a unit's command on another Ray node costs, beside starting it here.

Not a test: figures only. On a two-node Ray cluster started on this host (ray.cluster_utils,
as the tests do) it times, for a short command (`true`) and for one that writes N MB of output:
  here   harness.process.run -> ManagedProcess (fork/exec, process group, registry)
  node   harness.process.run under a NodeSite of the other node -> RemoteProcess (a keeper
         actor pinned there, the keeper, the command, its output mirrored into the local log)
and prints the median of `--repeat` runs of each and the ratio node / here. The ratio, not the
absolute times, is what carries over: this box is small and noisy.

    .venv/bin/python benchmarks/bench_node_site.py [--repeat 5] [--mb 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from harness import cluster
from harness import process
from harness.process import Command
from harness.workplan.leases import LeasedNode
from harness.workplan.node_site import NodeSite
from harness.workplan.node_site import own_node_id


def timed(command: Command, log: Path, repeat: int) -> tuple[float, int]:
    """Median seconds of `process.run(command)` and the bytes its log got."""
    times = []
    for _ in range(repeat):
        log.unlink(missing_ok=True)
        t0 = time.perf_counter()
        process.run(command, log, 300.0)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), log.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--mb", type=int, default=20, help="output of the chatty command, MB")
    args = parser.parse_args()
    os.environ.pop("RAY_ADDRESS", None)
    ray_cluster = cluster.RayCluster.start_local(2, {"CPU": 1})
    try:
        import ray

        own = own_node_id()
        other = next(n for n in ray.nodes() if n["Alive"] and n["NodeID"] != own)
        site = NodeSite(LeasedNode(other["NodeID"], other["NodeManagerAddress"], ()))
        lines = args.mb * 1024  # of 1 KiB
        chatty = (sys.executable, "-c",
                  f"import sys; [sys.stdout.write('x' * 1023 + '\\n') for _ in range({lines})]")
        commands = {"true": Command(("true",)), f"{args.mb} MB of output": Command(chatty)}
        with tempfile.TemporaryDirectory() as tmp:
            log = Path(tmp) / "out.log"
            print(f"{'command':<22} {'here (s)':>9} {'node (s)':>9} {'node/here':>9}  bytes")
            for name, command in commands.items():
                here, size_here = timed(command, log, args.repeat)
                with process.placed((), {}, site):
                    there, size_there = timed(command, log, args.repeat)
                same = "same" if size_here == size_there else f"{size_here} vs {size_there}"
                print(f"{name:<22} {here:>9.3f} {there:>9.3f} {there / here:>9.1f}  {same}")
        print(f"median of {args.repeat} runs each; node = {site.label}, a second Ray node on "
              "this host (the keeper actor's start dominates a short command)")
    finally:
        ray_cluster.shutdown()


if __name__ == "__main__":
    main()
