"""Throughput: `vllm bench serve` at each concurrency, gated on tok/s, TTFT and TPOT."""

import pytest

pytestmark = pytest.mark.throughput


def test_throughput(cell, server, stage):
    stage.run(server=server)
