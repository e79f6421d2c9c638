"""Device health (pyhlml/hl-smi), NIC ports, env vars, Ray HPUs, QUANT_CONFIG buffer."""

from __future__ import annotations


class GaudiPreflight:
    """Stage mixin of the backend; see harness/backends/base.py for the protocol."""
