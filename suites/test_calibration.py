"""Calibration: INC measure -> postprocess -> quantize, then unify/expand to the cell's TP/EP."""

import pytest

from harness.stages import calibration as calibration_stage

pytestmark = pytest.mark.calibration


def test_calibration(stage, calibration):
    stage.run(calibration_stage.run, calibration=calibration)
