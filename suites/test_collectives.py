"""Collectives: all_reduce bandwidth across the cell's ranks meets the device's floor."""

import pytest

from harness.stages import collectives

pytestmark = pytest.mark.collectives


def test_collectives(stage):
    stage.run(collectives.run)
