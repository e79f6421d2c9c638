"""`harness history show`: a metric's series per cell, its change points, and a plot on request.

Change points are described the way a person reports them: "throughput.output_throughput@c32 of
llama-3.1-8b/g2/tp1/fp8-kv-fp8_inc dropped 7.8% at run R (commit C, vllm 0.31.0 -> 0.32.0)".
The report (harness/report, issue 14) can call :func:`change_lines` for the same sentences.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from collections.abc import Sequence
from pathlib import Path

from harness.history.context import RunContext
from harness.history.context import differences
from harness.history.query import Point
from harness.stats.changepoint import ChangePoint
from harness.stats.changepoint import change_points


def _context(p: Point) -> RunContext:
    return RunContext(p.run_id, commit=p.commit, host_class=p.host_class, device=p.device,
                      versions=p.versions)


def describe_change(cell: str, points: Sequence[Point], cp: ChangePoint) -> str:
    """One sentence: what moved, by how much, at which run, and what changed there."""
    at, before = points[cp.index], points[cp.index - 1]
    verb = "dropped" if cp.after < cp.before else "rose"
    changed = differences(_context(before), _context(at))
    what = f"commit {at.commit or '?'}" + (f", {', '.join(changed)}" if changed else "")
    return (
        f"{at.metric} of {cell} {verb} {abs(cp.change_pct):.1f}% at run {at.run_id} ({what}): "
        f"median {cp.before:.4g} -> {cp.after:.4g}"
    )


def change_lines(found: Mapping[str, Sequence[Point]]) -> list[str]:
    """Change points of every series, one sentence each, only over like-with-like stretches."""
    lines = []
    for cell, points in found.items():
        for stretch in _stretches(points):
            for cp in change_points([p.value for p in stretch]):
                lines.append(describe_change(cell, stretch, cp))
    return lines


def _stretches(points: Sequence[Point]) -> list[list[Point]]:
    """Runs of consecutive points on the same host class and device (a stack change stays in:
    it is often the cause of the shift and is named in the sentence)."""
    out: list[list[Point]] = []
    for p in points:
        if out and (out[-1][-1].host_class, out[-1][-1].device) == (p.host_class, p.device):
            out[-1].append(p)
        else:
            out.append([p])
    return out


def render_series(
    found: Mapping[str, Sequence[Point]], metric: str, last: int | None = None
) -> str:
    """A plain-text table per cell (the `last` N runs): run, start, commit, status, value and
    change vs the previous run; then the change points, found over the whole series (a cut
    series would move a shift near its start)."""
    if not found:
        return f"no values of {metric} for these cells in the history\n"
    lines: list[str] = []
    for cell, everything in found.items():
        points = everything[-last:] if last else everything
        lines.append(f"{cell}  {metric}  ({len(points)} run(s))")
        lines.append(
            f"  {'run':<28} {'started':<26} {'commit':<14} {'status':<8} {'value':>12}  change"
        )
        prev: Point | None = None
        for p in points:
            if prev is not None:
                moved = differences(_context(prev), _context(p))
                if moved:  # say what differs rather than mix runs silently
                    lines.append(f"  -- from here: {', '.join(moved)}")
            change = (
                "" if prev is None or prev.value == 0
                else f"{(p.value - prev.value) / abs(prev.value) * 100:+.1f}%"
            )
            lines.append(
                f"  {p.run_id:<28} {p.started:<26} {p.commit or '-':<14} {p.status:<8} "
                f"{p.value:>12.5g}  {change}"
            )
            prev = p
        lines.append("")
    changes = change_lines(found)
    lines.append("change points:" if changes else "change points: none found")
    lines += [f"  {line}" for line in changes]
    return "\n".join(lines) + "\n"


def plot_series(found: Mapping[str, Sequence[Point]], metric: str, path: Path) -> Path:
    """A PNG of every series (run order on x), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for cell, points in found.items():
        ax.plot(range(len(points)), [p.value for p in points], marker="o", label=cell)
    ax.set_xlabel("run (oldest first)")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    if found:
        ax.legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path
