"""Which Gaudi generation scale files were computed for, and whether they are stale."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from harness.devices import DEVICES as REGISTRY
from harness.devices import GAUDI_DEVICES
from harness.measurements.layout import struct_items
from harness.measurements.model import FileGroup
from harness.measurements.model import MeasurementFile
from harness.measurements.naming import Kind
from harness.measurements.report import CheckReport
from harness.measurements.report import Severity
from harness.measurements.report import ranks_text

DEVICES = GAUDI_DEVICES
FULL_SCALE = {name: REGISTRY[name].fp8_full_scale for name in GAUDI_DEVICES}
_G2_EXPONENTS = {-8, -4, 0, 4}  # Gaudi2 hardware-aligned scales: step 4 in [2^-8, 2^4]


def _aligned_values(f: MeasurementFile) -> np.ndarray:
    """Input and weight scales only: an output scale is input x weight scale, so its exponent
    (2^-4 * 2^-8 = 2^-12 on Gaudi2) is not one of the hardware-aligned steps."""
    parts = []
    for i, struct in enumerate(f.layout.structs):
        base, _ = f.layout.span(i)
        for fld, _key, start, size, _shape in struct_items(struct):
            if fld != "outputs":
                parts.append(f.values[base + start : base + start + size])
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def infer_device(
    files: list[MeasurementFile], method: str | None, directory: Path
) -> tuple[str | None, str]:
    """The Gaudi generation scale files were computed for, and how that was told."""
    if method and "HW" in method.split("_"):
        vals = np.concatenate([_aligned_values(f) for f in files]) if files else np.zeros(0)
        vals = vals[np.isfinite(vals) & (vals > 0)]
        if vals.size:
            exps = np.log2(vals)
            if np.all(exps == np.round(exps)):
                uniq = {int(e) for e in np.unique(exps)}
                outside = sorted(uniq - _G2_EXPONENTS)
                if outside:
                    return (
                        "g3",
                        f"hardware-aligned scales such as 2^{outside[0]} exist only on Gaudi3",
                    )
                if vals.size >= 16 and len(uniq) >= 2:
                    return "g2", "every hardware-aligned scale is one of Gaudi2's 2^-8, 2^-4, 1, 16"
    for part in reversed(directory.resolve().parts):
        if part.lower() in DEVICES:
            return part.lower(), f"the directory is named {part}"
    return None, ""


def check_scales(
    report: CheckReport,
    g: FileGroup,
    loaded: dict[int, MeasurementFile],
    directory: Path,
    device: str | None,
    groups: dict[tuple[str, Kind, str | None], dict[int, FileGroup]],
    summary: dict[str, Any],
) -> str:
    found, basis = infer_device(list(loaded.values()), g.method, directory)
    summary["device"] = found
    where = next(iter(loaded.values())).path.parent
    if device is not None:
        if found is None:
            report.add(
                Severity.INFO,
                "device-unknown",
                f"cannot tell which Gaudi the {g.method} scales were computed for",
                where,
            )
        elif found != device:
            report.add(
                Severity.ERROR,
                "device-mismatch",
                f"the {g.method} scale files were computed for {found} ({basis}) but the target "
                f"is {device}: the FP8 full scale differs "
                f"({FULL_SCALE[found]:g} vs {FULL_SCALE[device]:g}); "
                "delete the scale files so INC recomputes them on the target (or set "
                "recalc_scales: true)",
                where,
            )
    ranges = groups.get((g.base, Kind.RANGES, None), {}).get(g.world)
    if ranges is not None:
        stale = []
        for rank in loaded:
            src = ranges.entries.get(rank, {})
            src_time = max((e.path.stat().st_mtime for e in src.values()), default=None)
            own = max(e.path.stat().st_mtime for e in g.entries[rank].values())
            if src_time is not None and own < src_time - 1.0:
                stale.append(rank)
        if stale:
            report.add(
                Severity.WARNING,
                "stale-scales",
                f"{g.method} scale files of ranks {ranks_text(stale)} are older than their range "
                "files: "
                "INC reuses existing scale files unless recalc_scales is true, so new measurements "
                "would be ignored; delete the scale files or set recalc_scales: true",
                where,
            )
    return f"scales for {found or 'an unknown device'}" + (f" ({basis})" if found else "")
