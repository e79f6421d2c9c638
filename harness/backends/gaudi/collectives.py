"""Hccl_demo all_reduce as in the seeds."""

from __future__ import annotations


class GaudiCollectives:
    """Stage mixin of the backend; see harness/backends/base.py for the protocol."""
