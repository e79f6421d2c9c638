"""One registry of device facts, and one rule for how many ranks a cell runs on.

Everything that depends on the device generation reads it here: the backend that drives it,
how many cards a node holds, the FP8 full scale INC divides by, INC's device name for
`device_for_scales`, and the KV-cache dtypes its vLLM accepts. Pure data: importable from the
measurement toolkit without pydantic or torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.errors import HarnessError


@dataclass(frozen=True, slots=True)
class DeviceFacts:
    """What one device generation is and allows."""

    name: str
    backend: str  # the backend that drives it: "gaudi" or "cpu"
    # cards (ranks) one node holds: a Gaudi2/Gaudi3 server has 8 OAM cards; a cpu "card" is one
    # rank process (whether this host has a core for each is the cpu backend's check)
    cards_per_node: int
    fp8_full_scale: float  # E4M3 max INC scales to: 240 on Gaudi2, 448 on Gaudi3 and CPU
    inc_device: str | None  # INC's `device_for_scales` value; None where INC has none
    kv_cache_dtypes: tuple[str, ...]  # what `--kv-cache-dtype` this device's vLLM accepts

    @property
    def is_gaudi(self) -> bool:
        return self.backend == "gaudi"


DEVICES: dict[str, DeviceFacts] = {
    "g2": DeviceFacts("g2", "gaudi", 8, 240.0, "GAUDI2", ("auto", "fp8_inc")),
    "g3": DeviceFacts("g3", "gaudi", 8, 448.0, "GAUDI3", ("auto", "fp8_inc")),
    "cpu": DeviceFacts("cpu", "cpu", 8, 448.0, None, ("auto", "fp8", "fp8_e4m3", "fp8_e5m2")),
}
GAUDI_DEVICES: tuple[str, ...] = tuple(n for n, d in DEVICES.items() if d.is_gaudi)


def device(name: str) -> DeviceFacts:
    """The facts of device `name`; an unknown name lists the known ones."""
    facts = DEVICES.get(name)
    if facts is None:
        raise HarnessError(f"unknown device {name!r}; known: {', '.join(DEVICES)}")
    return facts


def backend_for(devices: set[str] | frozenset[str]) -> str:
    """The backend a set of devices needs: gaudi when any is a Gaudi, else cpu."""
    return "gaudi" if any(DEVICES[d].is_gaudi for d in devices if d in DEVICES) else "cpu"


def ranks(tp: int, pp: int = 1, ep: int = 1) -> int:
    """Ranks a layout runs on: TP x PP, times the data-parallel factor expert parallelism adds
    when EP is wider than TP (vLLM's EP spans TP x DP ranks)."""
    dp = ep // tp if ep > tp else 1
    return tp * pp * dp


def nodes_for(world: int, cards_per_node: int) -> int:
    """Nodes `world` ranks fill, a node holding `cards_per_node` of them."""
    return -(-world // cards_per_node)
