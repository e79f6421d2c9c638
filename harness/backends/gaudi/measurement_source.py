"""A measurement set already on disk (`settings.calibration.source`), used instead of measuring.

Seed 003 downloads measurement sets (`huggingface-cli download Yi30/ds-r1-0528-default-pile-g2-
0529 --local-dir ./scripts/nc_workspace_measure_kvcache`) rather than calibrating. The set is
checked (every rank's range file and module list for the cell's world), copied into the cache
entry under the harness's prefix, and then served or derived like a set the harness measured:
vllm-gaudi gets the calibrate_model.sh quant config written for it (harness/calibration/config.py),
the fork its stock config pointed at the copy.
"""

from __future__ import annotations

import re
from pathlib import Path

from harness.backends.gaudi import fork_calibration
from harness.calibration import config as configs
from harness.calibration.layout import PREFIX
from harness.calibration.recipe import CalibrationJob
from harness.calibration.recipe import Recipe
from harness.calibration.recipe import Step
from harness.errors import HarnessError
from harness.process import Command

_RANGE = re.compile(r"_hooks_maxabs_(\d+)_(\d+)(_mod_list)?\.(json|npz)$")


def missing_files(listing: str, world: int) -> list[str]:
    """What a `world`-rank set lacks, from `ls -1` of its folder (any INC dump prefix)."""
    have: dict[int, set[str]] = {}
    for name in listing.split():
        match = _RANGE.search(name)
        if match and int(match.group(2)) == world:
            kind = "mod_list" if match.group(3) else match.group(4)
            have.setdefault(int(match.group(1)), set()).add(kind)
    need = {"json", "npz", "mod_list"}
    return [f"rank {r}: {', '.join(sorted(need - have.get(r, set())))}"
            for r in range(world) if need - have.get(r, set())]


def recipe(job: CalibrationJob, source: str) -> Recipe:
    """Check the set for the job's world, copy it in, and give it the stack's quant config."""
    layout = job.layout
    src, dst, world = Path(source), layout.measurement_dir, job.world
    node = 0 if job.tp > fork_calibration.CARDS_PER_NODE else None

    def complete(output: str) -> str | None:
        gaps = missing_files(output, world)
        if not gaps:
            return None
        return (f"{src}: not a {world}-rank INC measurement set ({'; '.join(gaps[:4])}); "
                "download the set made for this TP/EP (seed 003's table) or fix "
                "settings.calibration.source")

    check = Step("check-source", (Command(("ls", "-1", str(src)), node=node,
                 description=f"pre-made measurements: {src} must hold {world} ranks"),),
                 check=complete)
    copy = Step("copy-source", (Command(
        ("sh", "-c", f'mkdir -p "{dst}" && for f in "{src}"/*_hooks_maxabs_*; do '
         f'b="${{f##*/}}"; cp "$f" "{dst}/{PREFIX}_hooks_maxabs${{b#*_hooks_maxabs}}"; done'),
        node=node, description=f"copy the set into the cache entry as {PREFIX}_*"),))
    if job.stack == "vllm-fork":
        fork = Path(job.fork_dir or "/workspace/vllm-fork")
        quant = layout.model_dir / f"inc_quant_fork_{layout.device}.json"
        return Recipe((check, copy), dst, quant, world,
                      quant_copy=(fork / fork_calibration.QUANT_CONFIG, quant, dst / PREFIX))
    if not configs.rule_for(job.model).verified:
        raise HarnessError(
            f"{job.model}: calibrate_model.sh's quant config for this model family is not known "
            "to the harness, so a pre-made set cannot be given one; calibrate instead"
        )
    quant_cfg = configs.quant_config(job.out, job.model, job.device)
    return Recipe((check, copy), dst, layout.quant_config, world,
                  writes={layout.quant_config: quant_cfg})
