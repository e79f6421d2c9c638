"""Accuracy: lm-eval gsm8k against the cell's server, gated absolutely and against BF16."""

import pytest

from harness.stages import accuracy

pytestmark = pytest.mark.accuracy


def test_accuracy(stage, server):
    stage.run(accuracy.run, server=server)
