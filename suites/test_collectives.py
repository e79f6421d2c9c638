"""Collectives: all_reduce bandwidth across the cell's ranks meets the device's floor."""

import pytest

pytestmark = pytest.mark.collectives


def test_collectives(cell, stage):
    stage.run()
