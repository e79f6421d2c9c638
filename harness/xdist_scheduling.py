"""xdist scheduling by twin group: a cell and its BF16 twin run on the same worker, in order.

pytest-xdist 3.8's `--dist loadgroup` does not group under pytest 9.2 (xdist #1386), and a
cell's stages must share one server anyway, so the scope of an item is its cell's twin group
(model/device/parallelism): every stage of a cell, and the BF16 twin an FP8 cell is judged
against, go to one worker, where the session's order runs the twin first.
"""

from __future__ import annotations

from xdist.scheduler import LoadScopeScheduling

from harness.session import twin_group


def cell_scope(nodeid: str) -> str | None:
    """`suites/test_x.py::test_x[model/cpu/tp1/bf16-kv-auto]` -> `model/cpu/tp1/bf16-kv-auto`."""
    if nodeid.endswith("]") and "[" in nodeid:
        return nodeid[nodeid.index("[") + 1 : -1]
    return None


class CellScheduling(LoadScopeScheduling):
    """LoadScope with the cell's twin group as the scope."""

    def _split_scope(self, nodeid: str) -> str:
        cell = cell_scope(nodeid)
        return twin_group(cell) if cell is not None else str(super()._split_scope(nodeid))
