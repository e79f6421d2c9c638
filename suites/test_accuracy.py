"""Accuracy: lm-eval gsm8k against the cell's server, gated absolutely and against BF16."""

import pytest

pytestmark = pytest.mark.accuracy


def test_accuracy(cell, server, stage):
    stage.run(server=server)
