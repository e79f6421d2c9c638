"""`--plan`: every selected cell's stages with the exact commands and env; nothing runs."""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable
from pathlib import Path
from typing import Any

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
            stack_of = getattr(backend, "stack_name", None)  # gaudi: the cell's serving stack
            stack = f", stack {stack_of(cell)}" if stack_of is not None else ""
            lines += [
                "", f"cell {cell.id}  [{backend.name} backend{stack}, {cell.world_size} rank(s)]"
            ]
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


def plan_records(
    pairs: Iterable[tuple[Cell, Stage]], backend: Backend, run_dir: Path
) -> list[dict[str, Any]]:
    """The plan as data (issue 12 "machine-readable plan"): one record per cell with its stack
    and, per stage, every step's argv (a list), env, cwd and node, for users' own tooling."""
    cells: dict[str, dict[str, Any]] = {}
    for cell, stage in pairs:
        stack_of = getattr(backend, "stack_name", None)
        record = cells.setdefault(cell.id, {
            "cell": cell.id,
            "backend": backend.name,
            "stack": stack_of(cell) if stack_of is not None else None,
            "ranks": cell.world_size,
            "env": dict(sorted(backend.cell_env(cell).items())),
            "stages": [],
        })
        workdir = run_dir / "cells" / cell.id.replace("/", "__") / stage.value
        record["stages"].append({
            "stage": stage.value,
            "skip_reason": backend.skip_reason(cell, stage),
            "steps": [
                {"argv": list(c.argv), "env": dict(c.env), "cwd": c.cwd, "node": c.node,
                 "description": c.description}
                for c in backend.plan(cell, stage, workdir)
            ],
        })
    return list(cells.values())


def render_plan_json(pairs: Iterable[tuple[Cell, Stage]], backend: Backend, run_dir: Path) -> str:
    return json.dumps(plan_records(pairs, backend, run_dir), indent=1)
