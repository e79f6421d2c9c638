"""Throughput: `vllm bench serve` at each concurrency, gated on tok/s, TTFT and TPOT."""

import pytest

from harness.stages import throughput

pytestmark = pytest.mark.throughput


def test_throughput(stage, server):
    stage.run(throughput.run, server=server)
