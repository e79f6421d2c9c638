"""Derive many: which layout a cell calibrates at, and how its own TP/EP set is derived.

Rules (DESIGN.md "Measurement tools semantics", seeds 000-002):

* the measurement runs at `calibrate_tp`/`calibrate_ep` (default: the cell's own);
* a cell with fewer ranks than the measurement gets a unify (`-r`, with `-u` for MoE EP);
* a MoE cell with more ranks (or `expand: true`) gets unify-to-1 with `-u -s`, an optional
  postprocess (`-d` for DeepSeek) and an expand (`-w <cell ranks>`); E % ranks must be 0;
* a dense cell cannot be served from a smaller calibration: that is an error naming the fix.
"""

from __future__ import annotations

from harness import devices
from harness.calibration.recipe import Derivation
from harness.cell import Cell
from harness.errors import HarnessError


def _fail(cell: Cell, reason: str, fix: str) -> HarnessError:
    return HarnessError(f"{cell.id}: settings.calibration: {reason}; {fix}")


def calibrate_layout(cell: Cell) -> tuple[int, int]:
    """(tp, ep) the measurement runs at."""
    s = cell.settings.calibration
    tp = s.calibrate_tp or cell.tp
    if s.calibrate_ep is not None:
        ep = s.calibrate_ep
    elif tp == cell.tp:
        ep = cell.ep
    else:  # keep the cell's EP structure (EP == TP, or no EP) at the calibration's TP
        ep = tp if cell.ep > 1 else 1
    if ep > 1 and not cell.model.moe:
        raise _fail(cell, f"calibrate_ep={ep} for a dense model", "drop calibrate_ep")
    return tp, ep


def ranks(tp: int, ep: int) -> int:
    """Ranks (measurement files) of a layout without pipeline parallelism (devices.ranks)."""
    return devices.ranks(tp, 1, ep)


def derivation(cell: Cell) -> Derivation | None:
    """How the cell's set comes from the calibration; None when the calibration is the cell's."""
    s = cell.settings.calibration
    ctp, cep = calibrate_layout(cell)
    have = ranks(ctp, cep)
    want = ranks(cell.tp, cell.ep)
    moe = cell.model.moe
    ep_unify = s.expert_parallel_unify if s.expert_parallel_unify is not None else (moe and cep > 1)
    other_split = (ctp, cep) != (cell.tp, cell.ep) and want == have  # e.g. TP MoE vs EP MoE
    expand = s.expand if s.expand is not None else (moe and (want > have or other_split))
    if expand:
        if not moe:
            raise _fail(cell, "expand needs a MoE model", "set expand: false")
        experts = cell.model.num_experts
        if experts and experts % want:
            raise _fail(cell, f"{experts} experts do not split over {want} ranks",
                        "choose an EP that divides the expert count")
        if s.unify_ranks not in (None, 1):
            raise _fail(cell, f"unify_ranks={s.unify_ranks} with expand",
                        "expand starts from a set unified to 1 rank: use unify_ranks: 1")
        return Derivation(
            tp=cell.tp, ep=cell.ep, world=want,
            unify_ranks=1 if have > 1 else None,
            expert_parallel=ep_unify and have > 1,
            skip_scales=True,
            postprocess=s.postprocess and have > 1,
            expand_world=want,
        )
    if s.unify_ranks is not None or want < have:
        target = s.unify_ranks if s.unify_ranks is not None else want
        if target != want:
            raise _fail(cell, f"unify_ranks={target} but the cell runs {want} ranks",
                        f"use unify_ranks: {want}")
        if have % target or target >= have:
            raise _fail(cell, f"cannot unify {have} ranks to {target}",
                        "the target must be smaller and divide the calibration's ranks")
        return Derivation(tp=cell.tp, ep=cell.ep, world=want, unify_ranks=target,
                          expert_parallel=ep_unify)
    if want > have:
        raise _fail(cell, f"a dense {have}-rank calibration cannot serve {want} ranks",
                    f"set calibrate_tp >= {cell.tp} (unify derives smaller sets, not larger)")
    return None
