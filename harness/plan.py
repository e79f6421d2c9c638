"""`--plan`: every selected cell's stages with the exact commands and env; nothing runs."""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from pathlib import Path

from harness.backends.contracts import Backend
from harness.cell import Cell
from harness.cell import Stage


def render_plan(pairs: Iterable[tuple[Cell, Stage]], backend: Backend, run_dir: Path) -> str:
    """Group by cell, in run order; each stage lists its commands as pasteable shell lines."""
    lines: list[str] = []
    current: Cell | None = None
    for cell, stage in pairs:
        if cell is not current:
            current = cell
            lines += ["", f"cell {cell.id}  [{backend.name} backend, {cell.world_size} rank(s)]"]
            env = backend.cell_env(cell)
            if env:
                lines.append("  env: " + " ".join(f"{k}={v}" for k, v in sorted(env.items())))
        workdir = run_dir / "cells" / cell.id.replace("/", "__") / stage.value
        reason = backend.skip_reason(cell, stage)
        commands = backend.plan(cell, stage, workdir)
        lines.append(f"  [{stage.value}]" + (f"  (would skip here: {reason})" if reason else ""))
        if not commands:
            lines.append("    (runs in-process in the harness; no external command)")
        for cmd in commands:
            where = f"node {cmd.node}: " if cmd.node is not None else ""
            if cmd.cwd:
                where += f"cd {shlex.quote(cmd.cwd)} && "
            if cmd.description:
                lines.append(f"    # {cmd.description}")
            lines.append(f"    $ {where}{cmd.shell()}")
    return "\n".join(lines).lstrip("\n")
