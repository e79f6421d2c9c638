"""Vllm serve with INC env, lm_eval and vllm bench serve as in the seeds."""

from __future__ import annotations


class GaudiServing:
    """Stage mixin of the backend; see harness/backends/base.py for the protocol."""
