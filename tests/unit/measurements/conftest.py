"""Fixtures of the measurement tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from inc_sets import PREFIX
from inc_sets import dense_nodes
from inc_sets import scale_nodes
from inc_sets import write_rank

SetFactory = Callable[..., Path]


@pytest.fixture
def make_set(tmp_path: Path) -> SetFactory:
    """``make_set(name, world, nodes_fn, scales=False, mod_lists=True, **kw)`` writes a set, returns its dir."""

    def factory(
        name: str = "set",
        world: int = 4,
        nodes_fn: Callable[[int], dict[str, Any]] = dense_nodes,
        *,
        scales: bool = False,
        method: str = "MAXABS_HW",
        mod_lists: bool = True,
        prefix: str = PREFIX,
    ) -> Path:
        d = tmp_path / name
        for rank in range(world):
            nodes = nodes_fn(rank)
            names = [*nodes, "model.unmeasured.softmax"] if mod_lists else None
            write_rank(d, rank, world, nodes, prefix=prefix, mod_list=names)
            if scales:
                write_rank(d, rank, world, scale_nodes(nodes), prefix=prefix, method=method)
        return d

    return factory
