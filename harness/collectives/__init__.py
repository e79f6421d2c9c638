"""Collective bandwidth: hccl_demo output parsers (Gaudi) and a gloo benchmark (CPU)."""

from harness.collectives.bandwidth import BandwidthRow
from harness.collectives.bandwidth import bus_factor
from harness.collectives.bandwidth import format_size
from harness.collectives.bandwidth import headline
from harness.collectives.bandwidth import parse_size
from harness.collectives.bandwidth import size_range
from harness.collectives.hccl_output import HcclReport
from harness.collectives.hccl_output import parse_benchmark
from harness.collectives.hccl_output import parse_csv
from harness.collectives.hccl_output import parse_output
from harness.collectives.hccl_output import parse_summary

__all__ = [
    "BandwidthRow",
    "HcclReport",
    "bus_factor",
    "format_size",
    "headline",
    "parse_benchmark",
    "parse_csv",
    "parse_output",
    "parse_size",
    "parse_summary",
    "size_range",
]
