"""Calibration: INC measure -> postprocess -> quantize, then unify/expand to the cell's TP/EP."""

import pytest

pytestmark = pytest.mark.calibration


def test_calibration(cell, calibration, stage):
    stage.run(calibration=calibration)
