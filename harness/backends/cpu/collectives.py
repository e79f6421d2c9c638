"""Gloo all_reduce over local rank processes (and one command per Ray node when multi-node)."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from harness import cluster
from harness.cell import Cell
from harness.collectives.bandwidth import BandwidthRow
from harness.collectives.bandwidth import format_size
from harness.collectives.bandwidth import sizes_for
from harness.collectives.gloo_bench import read_figures
from harness.collectives.launch import CommandOutput
from harness.process import Command

DEFAULT_SIZES = ("1m", "4m", "16m")  # 16-64 MiB is where 2 gloo ranks plateau here (DESIGN)
RESULT = "gloo_bench.json"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class CpuCollectives:
    """A real, if small, collective: gloo all_reduce between rank processes on this host."""

    collectives_metric_names = ("algbw_gbps", "busbw_gbps")
    collectives_hint = (
        "read the rank logs in the stage directory; GLOO_SOCKET_IFNAME must name an interface "
        "every rank can reach (lo on one host)"
    )

    def collectives_nodes(self, cell: Cell) -> int:
        """The cell's own nodes: one local Ray node each."""
        return cell.nodes

    def collectives_ranks(self, cell: Cell) -> tuple[int, int]:
        """(ranks, ranks per node): the cell's world size, at least 2, spread over its nodes."""
        wanted = max(2, cell.settings.collectives.ranks or cell.world_size, cell.nodes)
        per_node = -(-wanted // cell.nodes)
        return per_node * cell.nodes, per_node

    def plan_collectives(self, cell: Cell, workdir: Path) -> list[Command]:
        s = cell.settings.collectives
        nranks, per_node = self.collectives_ranks(cell)
        sizes = ",".join(format_size(x) for x in sizes_for(s, DEFAULT_SIZES))
        if cell.nodes > 1:
            configured = cluster.cluster_address(cell.backend_options, os.environ)
            head = cluster.head_ip(cell.backend_options, os.environ) if configured else None
            head = head or "127.0.0.1"  # the local cluster's nodes all live on this host
            init = f"tcp://{head}:{_free_port()}"
        else:
            head, init = "127.0.0.1", f"file://{workdir / 'gloo.rendezvous'}"
        env = {"GLOO_SOCKET_IFNAME": "lo"} if head == "127.0.0.1" else {}
        cmds = []
        for node in range(cell.nodes):
            argv = (
                sys.executable, "-m", "harness.collectives.gloo_bench",
                "--test", s.test, "--nranks", str(nranks), "--ranks_per_node", str(per_node),
                "--node_id", str(node), "--sizes", sizes, "--loop", str(s.loop),
                "--warmup", str(s.warmup), "--max_seconds", f"{s.max_seconds_per_size:g}",
                "--init_method", init, "--timeout_s", f"{s.timeout_s:g}",
                "--json", str(workdir / RESULT),
            )  # fmt: skip
            desc = f"gloo all_reduce, {nranks} ranks over {cell.nodes} node(s)" if node == 0 else ""
            cmds.append(Command(argv, env, desc, node=node if cell.nodes > 1 else None))
        return cmds

    def collectives_collect(self, cell: Cell, workdir: Path) -> dict[int, list[str]]:
        """Files to bring back from the nodes: rank 0's figures."""
        return {0: [str(workdir / RESULT)]}

    def collectives_figures(
        self, cell: Cell, workdir: Path, outputs: Sequence[CommandOutput]
    ) -> tuple[list[BandwidthRow], bool | None]:
        """Rank 0's JSON: rows per size and whether the reduce gave the right data."""
        path = workdir / RESULT
        for out in outputs:
            if str(path) in out.files and not path.is_file():
                path.write_text(out.files[str(path)], encoding="utf-8")
        if not path.is_file():
            return [], None
        rows = read_figures(path)
        return rows, all(bool(r.verified) for r in rows)
