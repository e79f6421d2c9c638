"""Preflight: devices, memory, disk, software stack and env are fit for the cell."""

import pytest

pytestmark = pytest.mark.preflight


def test_preflight(cell, stage):
    stage.run()
