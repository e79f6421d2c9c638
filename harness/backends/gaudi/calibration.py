"""Calibrate_model.sh and the step-3/5/6 tools as in the seeds."""

from __future__ import annotations


class GaudiCalibration:
    """Stage mixin of the backend; see harness/backends/base.py for the protocol."""
