"""File names of INC measurement sets: ``<base>[_<METHOD>]_<rank>_<world>[_mod_list].<ext>``.

INC names its files after ``dump_stats_path`` plus ``_hooks_<observer>``: range files
``P_hooks_maxabs_3_8.json``/``.npz``, their module list ``P_hooks_maxabs_3_8_mod_list.json``,
and scale files ``P_hooks_maxabs_MAXABS_HW_3_8.json``/``.npz`` (the method, upper case, sits
between the base and the rank). Without ``WORLD_SIZE``/``LOCAL_RANK`` INC writes no rank suffix,
and no tool can tell the ranks apart: such names are reported, not guessed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

_NAME = re.compile(
    r"^(?P<stem>.+?)_(?P<rank>\d+)_(?P<world>\d+)(?P<mod_list>_mod_list)?\.(?P<ext>json|npz)$"
)

MOD_LIST_SUFFIX = "_mod_list"
RANK_RULE = "<prefix>_<rank>_<world>.json|.npz (for example inc_output_hooks_maxabs_0_8.json)"


class Kind(StrEnum):
    """What a measurement file holds."""

    RANGES = "ranges"  # Mode "DynamicRange": measured max-abs values
    SCALES = "scales"  # Mode "Scale": quantization scales computed from the ranges

    @property
    def mode(self) -> str:
        """The ``Mode`` value INC writes for this kind."""
        return "DynamicRange" if self is Kind.RANGES else "Scale"


@dataclass(frozen=True, order=True)
class FileName:
    """A parsed measurement file name."""

    base: str
    method: str | None
    rank: int
    world: int
    mod_list: bool = False
    ext: str = "json"

    @property
    def kind(self) -> Kind:
        return Kind.SCALES if self.method else Kind.RANGES

    @property
    def stem(self) -> str:
        """The part before ``_<rank>_<world>``."""
        return f"{self.base}_{self.method}" if self.method else self.base

    @property
    def name(self) -> str:
        suffix = MOD_LIST_SUFFIX if self.mod_list else ""
        return f"{self.stem}_{self.rank}_{self.world}{suffix}.{self.ext}"

    def renamed(self, rank: int, world: int) -> FileName:
        """The same file for another rank and world size."""
        return FileName(self.base, self.method, rank, world, self.mod_list, self.ext)

    def with_ext(self, ext: str) -> FileName:
        """The companion file with another extension (the ``.npz`` of a ``.json``)."""
        return FileName(self.base, self.method, self.rank, self.world, self.mod_list, ext)

    def mod_list_file(self) -> FileName:
        """The module list of this rank (written beside the range files)."""
        return FileName(self.base, None, self.rank, self.world, True, "json")


def parse_file_name(name: str) -> FileName | None:
    """Parse a measurement file name; None when it does not follow the rank rule."""
    m = _NAME.match(name)
    if m is None:
        return None
    base, method = split_method(m["stem"])
    if m["mod_list"] and method:
        # module lists belong to the range files; an upper-case tail is part of the base
        base, method = m["stem"], None
    return FileName(
        base=base,
        method=method,
        rank=int(m["rank"]),
        world=int(m["world"]),
        mod_list=bool(m["mod_list"]),
        ext=m["ext"],
    )


def split_method(stem: str) -> tuple[str, str | None]:
    """Split ``P_hooks_maxabs_MAXABS_HW`` into (``P_hooks_maxabs``, ``MAXABS_HW``).

    The method is the longest tail of ``_``-separated all-upper-case tokens, provided
    something lower case remains in front of it (observers are lower case: ``maxabs``).
    """
    tokens = stem.split("_")
    i = len(tokens)
    while i > 0 and tokens[i - 1].isupper():
        i -= 1
    if i == len(tokens) or i == 0:
        return stem, None
    return "_".join(tokens[:i]), "_".join(tokens[i:])


def looks_like_measurement(name: str) -> bool:
    """Whether a file that fails the rank rule was meant to be a measurement file."""
    return name.endswith((".json", ".npz")) and ("_hooks_" in name or MOD_LIST_SUFFIX in name)
