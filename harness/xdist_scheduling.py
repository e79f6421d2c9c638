"""xdist scheduling by cell: every stage of a cell runs on the same worker, in order.

pytest-xdist 3.8's `--dist loadgroup` does not group under pytest 9.2 (xdist #1386), and a
cell's stages must share one server anyway, so the scope of an item is its cell id.
"""

from __future__ import annotations

from xdist.scheduler import LoadScopeScheduling


def cell_scope(nodeid: str) -> str | None:
    """`suites/test_x.py::test_x[model/cpu/tp1/bf16-kv-auto]` -> `model/cpu/tp1/bf16-kv-auto`."""
    if nodeid.endswith("]") and "[" in nodeid:
        return nodeid[nodeid.index("[") + 1 : -1]
    return None


class CellScheduling(LoadScopeScheduling):
    """LoadScope with the cell id as the scope."""

    def _split_scope(self, nodeid: str) -> str:
        return cell_scope(nodeid) or super()._split_scope(nodeid)
