"""INC measure/quantize on CPU with TP/EP rank processes (torch.distributed, gloo)."""

from __future__ import annotations


class CpuCalibration:
    """Stage mixin of the backend; see harness/backends/base.py for the protocol."""
