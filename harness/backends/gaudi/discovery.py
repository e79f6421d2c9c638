"""Gaudi device discovery through pyhlml, else `hl-smi`; 'no Gaudi' is a reason, never a crash."""

from __future__ import annotations

import shutil
import subprocess

from harness.backends.base import Inventory
from harness.devices import DEVICES

# hl-smi / HLML report product names like "HL-225" (Gaudi2) and "HL-325L" (Gaudi3).
_GENERATION_BY_PREFIX = {"HL-2": "g2", "HL-3": "g3"}
CARDS_PER_NODE = DEVICES["g2"].cards_per_node  # a Gaudi2/Gaudi3 server: 8 cards (OAM)
NO_GAUDI_HINT = "install the Habana driver and hl-smi, or use --backend cpu"


def generation_of(product_name: str) -> str | None:
    """Map an HLML product name to g2/g3."""
    name = product_name.strip().upper()
    for prefix, gen in _GENERATION_BY_PREFIX.items():
        if name.startswith(prefix):
            return gen
    if "GAUDI3" in name or "GAUDI 3" in name:
        return "g3"
    if "GAUDI2" in name or "GAUDI 2" in name:
        return "g2"
    return None


def _via_pyhlml() -> Inventory | None:
    try:
        import pyhlml  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        pyhlml.hlmlInit()
    except Exception as exc:  # the library raises its own error types when no driver is loaded
        return Inventory(
            None, 0, missing_reason=f"pyhlml could not initialise ({exc}); {NO_GAUDI_HINT}"
        )
    try:
        count = pyhlml.hlmlDeviceGetCount()
        names = [
            pyhlml.hlmlDeviceGetName(pyhlml.hlmlDeviceGetHandleByIndex(i)) for i in range(count)
        ]
    finally:
        pyhlml.hlmlShutdown()
    return _from_names([n.decode() if isinstance(n, bytes) else str(n) for n in names], "pyhlml")


def _via_hl_smi() -> Inventory | None:
    exe = shutil.which("hl-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "-Q", "name", "-f", "csv,noheader"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError) as exc:
        return Inventory(None, 0, missing_reason=f"hl-smi failed ({exc}); check the driver")
    return _from_names(parse_hl_smi_names(out), "hl-smi")


def parse_hl_smi_names(output: str) -> list[str]:
    """Names from `hl-smi -Q name -f csv,noheader`, one device a line."""
    return [line.strip() for line in output.splitlines() if line.strip()]


def _from_names(names: list[str], source: str) -> Inventory:
    if not names:
        return Inventory(
            None, 0, missing_reason=f"{source} lists no Gaudi devices; {NO_GAUDI_HINT}"
        )
    gens = {generation_of(n) for n in names}
    if len(gens) != 1 or None in gens:
        return Inventory(
            None, 0, missing_reason=f"{source}: unknown or mixed devices {sorted(set(names))}"
        )
    return Inventory(gens.pop(), len(names), f"{len(names)} x {names[0]} ({source})")


def discover() -> Inventory:
    """pyhlml first, then hl-smi; neither present is 'no Gaudi' with what to do."""
    for probe in (_via_pyhlml, _via_hl_smi):
        found = probe()
        if found is not None:
            return found
    return Inventory(
        None, 0, missing_reason=f"no Gaudi: neither pyhlml nor hl-smi found ({NO_GAUDI_HINT})"
    )
