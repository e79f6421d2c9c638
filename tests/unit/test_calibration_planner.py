"""Derive many: which layout a cell calibrates at and how its own set is derived."""

from __future__ import annotations

import pytest

from harness.calibration import planner
from harness.cell import Cell
from harness.cell import ModelFacts
from harness.errors import HarnessError
from harness.settings import CalibrationSettings
from harness.settings import StageSettings

DENSE = ModelFacts(name="dense", path="/m/dense")
MOE = ModelFacts(name="moe", path="/m/moe", architecture="mixtral", moe=True, num_experts=8)


def cell(model=DENSE, tp=1, ep=1, **calibration):
    settings = StageSettings(calibration=CalibrationSettings(**calibration))
    return Cell(model=model, device="cpu", tp=tp, ep=ep, quantization="fp8", settings=settings)


def test_a_cell_calibrates_at_its_own_layout_by_default():
    c = cell(MOE, tp=2, ep=2)
    assert planner.calibrate_layout(c) == (2, 2)
    assert planner.derivation(c) is None


def test_a_dense_cell_calibrated_wider_is_unified_to_its_ranks():
    d = planner.derivation(cell(tp=1, calibrate_tp=2, unify_ranks=1))
    assert d is not None
    assert (d.unify_ranks, d.expert_parallel, d.expand_world, d.world) == (1, False, None, 1)
    assert d.steps == ("unify -r 1",)


def test_unify_is_implied_when_the_cell_has_fewer_ranks():
    d = planner.derivation(cell(tp=4, calibrate_tp=8))
    assert d is not None and d.unify_ranks == 4


def test_a_moe_ep_calibration_unifies_with_expert_parallel_rules():
    d = planner.derivation(cell(MOE, tp=1, calibrate_tp=2, calibrate_ep=2, unify_ranks=1))
    assert d is not None and d.expert_parallel and d.unify_ranks == 1


def test_a_moe_cell_with_more_ranks_is_unified_to_one_postprocessed_and_expanded():
    d = planner.derivation(cell(MOE, tp=4, ep=4, calibrate_tp=2, calibrate_ep=2))
    assert d is not None
    assert d.steps == ("unify -r 1 -u -s", "postprocess", "expand -w 4")
    assert (d.tp, d.ep, d.world) == (4, 4, 4)


def test_a_single_rank_calibration_expands_without_unify_or_second_postprocess():
    d = planner.derivation(cell(MOE, tp=2, ep=2, calibrate_tp=1, calibrate_ep=1))
    assert d is not None and d.steps == ("expand -w 2",)


def test_expand_keeps_the_ep_structure_of_the_cell_at_the_calibration_tp():
    assert planner.calibrate_layout(cell(MOE, tp=2, ep=2, calibrate_tp=1)) == (1, 1)
    assert planner.calibrate_layout(cell(MOE, tp=4, ep=4, calibrate_tp=2)) == (2, 2)


def test_a_dense_cell_cannot_be_served_from_a_smaller_calibration():
    with pytest.raises(HarnessError, match="cannot serve 2 ranks.*calibrate_tp >= 2"):
        planner.derivation(cell(tp=2, calibrate_tp=1))


def test_unify_ranks_must_be_the_cells_rank_count():
    with pytest.raises(HarnessError, match="unify_ranks=2 but the cell runs 1 ranks"):
        planner.derivation(cell(tp=1, calibrate_tp=4, unify_ranks=2))


def test_expand_needs_a_moe_model():
    with pytest.raises(HarnessError, match="expand needs a MoE model"):
        planner.derivation(cell(tp=1, calibrate_tp=1, expand=True))


def test_expand_needs_experts_that_split_over_the_ranks():
    model = ModelFacts(name="m6", path="/m/m6", moe=True, num_experts=6)
    with pytest.raises(HarnessError, match="6 experts do not split over 4 ranks"):
        planner.derivation(cell(model, tp=4, ep=4, calibrate_tp=1, calibrate_ep=1))


def test_expand_starts_from_one_rank():
    with pytest.raises(HarnessError, match="use unify_ranks: 1"):
        planner.derivation(cell(MOE, tp=2, ep=2, calibrate_tp=4, calibrate_ep=4,
                                unify_ranks=2, expand=True))


def test_calibrate_ep_on_a_dense_model_is_an_error():
    with pytest.raises(HarnessError, match="calibrate_ep=2 for a dense model"):
        planner.calibrate_layout(cell(tp=2, calibrate_tp=2, calibrate_ep=2))


def test_ranks_count_the_dp_factor_expert_parallelism_adds():
    assert planner.ranks(8, 8) == 8
    assert planner.ranks(8, 16) == 16
    assert planner.ranks(4, 1) == 4
