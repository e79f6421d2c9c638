"""Gloo all_reduce over local rank processes (and Ray actors for the multi-node form)."""

from __future__ import annotations


class CpuCollectives:
    """Stage mixin of the backend; see harness/backends/base.py for the protocol."""
