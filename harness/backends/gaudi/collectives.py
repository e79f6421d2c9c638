"""Hccl_demo all_reduce as in the seeds: one run_hccl_demo.py per node, HCCL_COMM_ID=<head>:5555."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from harness import cluster
from harness.backends.gaudi.discovery import CARDS_PER_NODE
from harness.cell import Cell
from harness.collectives.bandwidth import BandwidthRow
from harness.collectives.bandwidth import format_size
from harness.collectives.bandwidth import sizes_for
from harness.collectives.hccl_output import parse_csv
from harness.collectives.hccl_output import parse_output
from harness.collectives.launch import CommandOutput
from harness.collectives.launch import rounds
from harness.process import Command

SEED_SIZES = ("32m",)
CSV = "hccl_demo_node{node}.csv"


class GaudiCollectives:
    """hccl_demo's figures: NW bandwidth (bus) and Algo bandwidth, as it names them."""

    collectives_metric_names = ("algo_bandwidth_gbps", "nw_bandwidth_gbps")
    collectives_hint = (
        "check the NIC ports (preflight nic.ports), that HCCL_COMM_ID's head IP and port are "
        "reachable from every node, HCCL_SOCKET_IFNAME, and that hccl_demo was built with "
        "`make` (seed 003); the node logs are in the stage directory"
    )

    def collectives_nodes(self, cell: Cell) -> int:
        """The nodes the cell uses, its calibration's included: a TP8 cell calibrated at TP16
        over two nodes (seed 000) depends on the fabric between them too."""
        return cluster.nodes_needed(cell, CARDS_PER_NODE)

    def collectives_ranks(self, cell: Cell) -> tuple[int, int]:
        """(ranks, ranks per node): every card of the cell's nodes, as the seeds run it."""
        nodes = self.collectives_nodes(cell)
        nranks = cell.settings.collectives.ranks or nodes * CARDS_PER_NODE
        return nranks, min(CARDS_PER_NODE, -(-nranks // nodes))

    def plan_collectives(self, cell: Cell, workdir: Path) -> list[Command]:
        s = cell.settings.collectives
        nranks, per_node = self.collectives_ranks(cell)
        nodes = self.collectives_nodes(cell)
        if nodes > 1:
            head = cluster.head_ip(cell.backend_options, os.environ) or cluster.UNKNOWN_HEAD
        else:
            head = "127.0.0.1"
        if s.size_range:
            size_args = [["--size_range", *s.size_range]]
            if s.size_range_inc != 1:
                size_args[0] += ["--size_range_inc", str(s.size_range_inc)]
        else:
            size_args = [["--size", format_size(x)] for x in sizes_for(s, SEED_SIZES)]
        cmds = []
        for sizes in size_args:
            for node in range(nodes):
                argv = [
                    "python3", "run_hccl_demo.py", "--test", s.test, "--nranks", str(nranks),
                    "--loop", str(s.loop), "--node_id", str(node), *sizes,
                    "--ranks_per_node", str(per_node),
                ]  # fmt: skip
                if s.csv:  # run_hccl_demo.py:151 @f623d69 (--csv_path until cccd1e8)
                    argv += ["--result_csv", str(workdir / CSV.format(node=node))]
                desc = (
                    f"hccl_demo {s.test}, {nranks} ranks over {nodes} node(s), "
                    f"in {s.hccl_demo_dir}/ (seed 003)"
                    if node == 0
                    else ""
                )
                cmds.append(
                    Command(
                        tuple(argv),
                        {"HCCL_COMM_ID": f"{head}:{s.comm_port}"},
                        desc,
                        cwd=s.hccl_demo_dir,
                        node=node if nodes > 1 else None,
                    )
                )
        return cmds

    def collectives_collect(self, cell: Cell, workdir: Path) -> dict[int, list[str]]:
        """The per-rank CSV each node writes with --result_csv (settings.collectives.csv)."""
        if not cell.settings.collectives.csv:
            return {}
        return {n: [str(workdir / CSV.format(node=n))] for n in range(self.collectives_nodes(cell))}

    def collectives_figures(
        self, cell: Cell, workdir: Path, outputs: Sequence[CommandOutput]
    ) -> tuple[list[BandwidthRow], bool | None]:
        """Rows from each run's output (summary table or [BENCHMARK] blocks), else its CSV."""
        nranks, _ = self.collectives_ranks(cell)
        rows: list[BandwidthRow] = []
        verdicts: list[bool | None] = []
        by_cmd = {id(o.command): o for o in outputs}
        for group in rounds([o.command for o in outputs]):
            outs = [by_cmd[id(c)] for c in group]
            report = parse_output([o.text for o in outs], nranks)
            if not report.rows:
                csv_text = "\n".join(t for o in outs for t in o.files.values())
                local = [workdir / CSV.format(node=n) for n in range(self.collectives_nodes(cell))]
                csv_text = csv_text or "\n".join(p.read_text() for p in local if p.is_file())
                report = parse_csv(csv_text, nranks) if csv_text else report
            rows += report.rows
            verdicts.append(report.verified)
        if any(v is False for v in verdicts):
            return rows, False
        return rows, True if verdicts and all(verdicts) else None
