"""Preflight: devices, memory, disk, software stack and env are fit for the cell."""

import pytest

from harness.stages import preflight

pytestmark = pytest.mark.preflight


def test_preflight(stage):
    stage.run(preflight.run)
