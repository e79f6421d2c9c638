"""Message sizes and bandwidth figures, with hccl_demo's and nccl-tests' conventions.

algbw = bytes / time of one collective; busbw (hccl_demo: "NW Bandwidth") = algbw x a factor
that makes figures comparable across rank counts: 2(n-1)/n for all_reduce. The seeds' Gaudi2
lines check out: 258.259144 / 147.576654 = 1.75 = 2*7/8 (8 ranks), 205.899352 / 109.812988 =
1.875 = 2*15/16 (16 ranks).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Sequence
from dataclasses import asdict
from dataclasses import dataclass
from typing import Any

from harness.errors import HarnessError

# hccl_demo's run_hccl_demo.py parse_size: G/M/K/B (any case), 1024-based, no unit = bytes.
_UNITS = {"g": 1024**3, "m": 1024**2, "k": 1024, "b": 1}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([gmkbGMKB]?)\s*$")

# Bus bandwidth factor per collective, as nccl-tests and hccl_demo apply it.
_BUS_FACTORS: dict[str, Callable[[int], float]] = {
    "all_reduce": lambda n: 2 * (n - 1) / n,
    "all_gather": lambda n: (n - 1) / n,
    "reduce_scatter": lambda n: (n - 1) / n,
    "all2all": lambda n: (n - 1) / n,
    "broadcast": lambda n: 1.0,
    "reduce": lambda n: 1.0,
}


def parse_size(text: str | int) -> int:
    """`32m` -> 33554432 (hccl_demo semantics); a bad value names itself and the units."""
    if isinstance(text, int):
        return text
    match = _SIZE.match(str(text))
    if not match:
        raise HarnessError(
            f"message size {text!r} is not a number with an optional unit G, M, K or B "
            "(e.g. 32m, 1M, 4096)"
        )
    number, unit = match.groups()
    size = int(float(number) * _UNITS[(unit or "b").lower()])
    if size < 1:
        raise HarnessError(f"message size {text!r} is less than one byte")
    return size


def format_size(size: int) -> str:
    """33554432 -> `32m`: the largest unit that divides the size (metric suffixes use it)."""
    for unit in ("g", "m", "k"):
        if size % _UNITS[unit] == 0:
            return f"{size // _UNITS[unit]}{unit}"
    return f"{size}b"


def size_range(low: str | int, high: str | int, inc: int = 1) -> list[int]:
    """hccl_demo --size_range MIN MAX --size_range_inc M: MIN, MIN*2^M, ... up to MAX."""
    lo, hi = parse_size(low), parse_size(high)
    if lo > hi:
        raise HarnessError(f"size range {low}..{high}: the minimum is larger than the maximum")
    if inc < 1:
        raise HarnessError(f"size_range_inc {inc} must be at least 1")
    sizes, size = [], lo
    while size <= hi:
        sizes.append(size)
        size *= 2**inc
    return sizes


def bus_factor(test: str, nranks: int) -> float:
    """busbw / algbw for `test` over `nranks` ranks."""
    if nranks < 1:
        raise HarnessError(f"a collective needs at least one rank, got {nranks}")
    try:
        return float(_BUS_FACTORS[test](nranks))
    except KeyError:
        known = ", ".join(_BUS_FACTORS)
        raise HarnessError(f"unknown collective {test!r}; known: {known}") from None


@dataclass(frozen=True)
class BandwidthRow:
    """One message size of one collective benchmark, in GB/s (1e9 bytes per second)."""

    size_bytes: int
    algbw_gbps: float
    busbw_gbps: float
    nranks: int = 0
    count: int = 0  # elements
    dtype: str = "float"
    iterations: int = 0
    time_us: float | None = None
    verified: bool | None = None  # data checked after the reduce (None: the tool did not say)
    source: str = ""  # which output form it came from

    @property
    def size_label(self) -> str:
        return format_size(self.size_bytes)

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "size": self.size_label}


def headline(rows: Sequence[BandwidthRow]) -> BandwidthRow:
    """The row bandwidth gates are about: the largest message (the seeds gate 32 MB)."""
    if not rows:
        raise HarnessError("no bandwidth figures to report")
    return max(rows, key=lambda r: (r.size_bytes, -r.busbw_gbps))


def slowest_per_size(rows: Iterable[BandwidthRow]) -> list[BandwidthRow]:
    """One row per size, the slowest one (per-rank CSV lines: the collective is as slow as it)."""
    best: dict[int, BandwidthRow] = {}
    for row in rows:
        kept = best.get(row.size_bytes)
        if kept is None or row.busbw_gbps < kept.busbw_gbps:
            best[row.size_bytes] = row
    return [best[s] for s in sorted(best)]


def sizes_for(settings: Any, default: Sequence[str]) -> list[int]:
    """Message sizes of a run: `size_range` if set, else `sizes` if the matrix set it, else
    the backend's default (Gaudi keeps the seeds' 32m; the CPU miniature a few small sizes)."""
    if settings.size_range:
        return size_range(settings.size_range[0], settings.size_range[1], settings.size_range_inc)
    chosen = settings.sizes if "sizes" in settings.model_fields_set else default
    return [parse_size(s) for s in chosen]
