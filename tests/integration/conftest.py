"""Fixtures shared by integration modules."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from harness import cluster


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[cluster.RayCluster]:
    """A real two-node Ray cluster on this host (2 CPU and 8 fake HPU a node), one a module."""
    saved = os.environ.pop("RAY_ADDRESS", None)
    started = cluster.RayCluster.start_local(2, {"CPU": 2, "HPU": 8})
    try:
        yield started
    finally:
        started.shutdown()
        if saved is not None:
            os.environ["RAY_ADDRESS"] = saved
