"""Where calibrate_model.sh puts files: `<out>/<model>/<device>/inc_output_hooks_maxabs_<r>_<w>`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

PREFIX = "inc_output"
OBSERVER = "maxabs"
_RANGE = re.compile(rf"^{PREFIX}_hooks_{OBSERVER}_(\d+)_(\d+)\.(json|npz)$")
# scale files carry the upper-case method between the observer and the rank: _MAXABS_HW_0_8
_SCALE = re.compile(rf"^{PREFIX}_hooks_{OBSERVER}_([A-Z][A-Z0-9_]*)_(\d+)_(\d+)\.(json|npz)$")


@dataclass(frozen=True)
class OutputLayout:
    """One calibration output tree, as the script lays it out."""

    out: Path
    model: str
    device: str

    @property
    def model_dir(self) -> Path:
        return self.out / self.model

    @property
    def measurement_dir(self) -> Path:
        return self.model_dir / self.device

    @property
    def dump_stats_path(self) -> Path:
        return self.measurement_dir / PREFIX

    @property
    def measure_config(self) -> Path:
        return self.model_dir / f"maxabs_measure_{self.device}.json"

    @property
    def quant_config(self) -> Path:
        return self.model_dir / f"maxabs_quant_{self.device}.json"


def range_name(rank: int, world: int, ext: str = "json") -> str:
    return f"{PREFIX}_hooks_{OBSERVER}_{rank}_{world}.{ext}"


def mod_list_name(rank: int, world: int) -> str:
    return f"{PREFIX}_hooks_{OBSERVER}_{rank}_{world}_mod_list.json"


def range_files(directory: Path, world: int, ext: str = "json") -> list[Path]:
    """The range files of a `world`-rank set in `directory`, by rank (only those present)."""
    found = [directory / range_name(r, world, ext) for r in range(world)]
    return [p for p in found if p.is_file()]


def scale_files(directory: Path, world: int, ext: str = "json") -> list[Path]:
    """Scale files (`..._<METHOD>_<r>_<world>`) of a `world`-rank set, sorted by rank."""
    hits = []
    for p in directory.glob(f"{PREFIX}_hooks_{OBSERVER}_*_{world}.{ext}"):
        m = _SCALE.match(p.name)
        if m and int(m.group(3)) == world:
            hits.append((int(m.group(2)), p))
    return [p for _, p in sorted(hits)]


def worlds_present(directory: Path) -> list[int]:
    """World sizes of the range sets in `directory` (a dir may hold a base and a unified set)."""
    worlds = set()
    for p in directory.glob(f"{PREFIX}_hooks_{OBSERVER}_*.json"):
        m = _RANGE.match(p.name)
        if m:
            worlds.add(int(m.group(2)))
    return sorted(worlds)
