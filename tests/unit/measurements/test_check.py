"""check: every finding code on a small set made wrong in one way."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from inc_sets import PREFIX
from inc_sets import dense_nodes
from inc_sets import ep_nodes
from inc_sets import load_doc
from inc_sets import write_rank

from harness.errors import MeasurementError
from harness.measurements import Severity
from harness.measurements import check
from harness.measurements import expand
from harness.measurements import unify


def _codes(report) -> dict[str, Severity]:
    return {f.code: f.severity for f in report.findings}


def _edit(path: Path, fn) -> None:
    doc = load_doc(path)
    fn(doc)
    path.write_text(json.dumps(doc, indent=4, allow_nan=True))


def test_a_clean_set_has_no_findings_but_the_unmeasured_module(make_set) -> None:
    report = check(make_set(world=2, scales=True), device="g2")
    assert report.ok
    assert set(_codes(report)) == {"unmeasured-module"}
    assert report.sets[0]["world"] == 2 and report.sets[0]["nodes"] == 12
    assert report.sets[1]["device"] == "g2"
    assert _codes(
        check(make_set("unknown", world=1, scales=True, method="MAXABS_POW2"), device="g2")
    ) == {
        "unmeasured-module": Severity.WARNING,
        "device-unknown": Severity.INFO,
    }
    assert "1 modules of the module list have no measurement" in report.render()


def test_missing_rank(make_set) -> None:
    d = make_set(world=4)
    for ext in ("json", "npz"):
        (d / f"{PREFIX}_1_4.{ext}").unlink()
    report = check(d)
    assert _codes(report)["missing-rank"] is Severity.ERROR
    assert "ranks 1 of world 4 are missing" in report.render()
    assert not report.ok


def test_duplicate_rank_and_rank_mismatch(make_set) -> None:
    d = make_set(world=3)
    for ext in ("json", "npz"):
        shutil.copy(d / f"{PREFIX}_0_3.{ext}", d / f"{PREFIX}_2_3.{ext}")
    codes = _codes(check(d))
    assert codes["duplicate-rank"] is Severity.ERROR
    assert codes["rank-mismatch"] is Severity.WARNING


def test_world_sizes_that_disagree(make_set) -> None:
    d = make_set(world=4)
    write_rank(d, 3, 8, dense_nodes(3))
    report = check(d)
    assert _codes(report)["world-mismatch"] is Severity.ERROR
    assert "world 4: ranks 0-3; world 8: ranks 3" in report.render()


def test_complete_sets_of_two_sizes_are_both_checked(make_set) -> None:
    d = make_set(world=4)
    unify(d, d, ranks=2)
    report = check(d)
    assert report.ok
    assert _codes(report)["several-sets"] is Severity.INFO
    assert sorted(s["world"] for s in report.sets) == [2, 4]
    # with a target world only its set is checked (the other is the unify's source)
    report = check(d, world=2)
    assert report.ok and [s["world"] for s in report.sets] == [2]
    assert not check(d, world=8).ok


def test_node_sets_that_differ(make_set) -> None:
    d = make_set(world=2)
    path = d / f"{PREFIX}_1_2.json"
    _edit(path, lambda doc: doc["Nodes"].pop("model.layers.0.mlp.down_proj"))
    (d / f"{PREFIX}_1_2.npz").unlink()
    codes = _codes(check(d))
    assert codes["node-set-differs"] is Severity.ERROR
    assert codes["missing-npz"] is Severity.ERROR


def test_shapes_that_differ(tmp_path: Path) -> None:
    write_rank(tmp_path, 0, 2, dense_nodes(0, channels=3))
    write_rank(tmp_path, 1, 2, dense_nodes(1, channels=5))
    assert _codes(check(tmp_path))["shape-differs"] is Severity.ERROR


@pytest.mark.parametrize(
    ("value", "code"),
    [(float("nan"), "non-finite"), (float("inf"), "non-finite"), (-1.5, "negative")],
)
def test_bad_values(make_set, value: float, code: str) -> None:
    d = make_set(world=2)

    def poison(doc: dict) -> None:
        doc["Nodes"]["model.layers.1.mlp.down_proj"]["params"]["weight"][2] = [value]

    _edit(d / f"{PREFIX}_0_2.json", poison)
    report = check(d)
    finding = next(f for f in report.findings if f.code == code)
    assert finding.severity is Severity.ERROR
    assert "model.layers.1.mlp.down_proj params['weight']" in finding.message
    assert _codes(report)["npz-json-mismatch"] is Severity.ERROR  # the npz still has the old value


def test_unparsable_file_is_reported_not_raised(make_set) -> None:
    d = make_set(world=2)
    (d / f"{PREFIX}_1_2.json").write_text("{nope")
    report = check(d)
    finding = next(f for f in report.findings if f.code == "unreadable")
    assert finding.location.endswith(f"{PREFIX}_1_2.json") and "unparsable JSON" in finding.message


def test_npz_that_differs_from_its_json(make_set) -> None:
    d = make_set(world=2)
    shutil.copy(d / f"{PREFIX}_1_2.npz", d / f"{PREFIX}_0_2.npz")
    report = check(d)
    finding = next(f for f in report.findings if f.code == "npz-json-mismatch")
    assert "values differ" in finding.message and "INC reads" in finding.message


def test_bad_names_and_mixed_prefixes(make_set) -> None:
    d = make_set(world=1)
    (d / f"{PREFIX}.json").write_text("{}")
    write_rank(d, 0, 1, dense_nodes(0), prefix="other_hooks_maxabs")
    codes = _codes(check(d))
    assert codes["bad-name"] is Severity.ERROR
    assert codes["mixed-prefix"] is Severity.ERROR


def test_no_files(tmp_path: Path) -> None:
    assert _codes(check(tmp_path))["no-files"] is Severity.ERROR
    with pytest.raises(MeasurementError, match="not a directory"):
        check(tmp_path / "missing")


def test_unrouted_experts_are_named_by_layer(tmp_path: Path) -> None:
    for rank in range(2):
        nodes = ep_nodes(rank)
        if rank == 1:
            nodes["model.layers.2.mlp.experts.moe_op"]["outputs"][2] = [[0.0]]
        write_rank(tmp_path / "s", rank, 2, nodes)
    report = check(tmp_path / "s")
    finding = next(f for f in report.findings if f.code == "unrouted-expert")
    assert finding.severity is Severity.WARNING
    assert finding.message.startswith(
        "model.layers.2.mlp.experts.moe_op: 1 experts have intermediate amax 0"
    )
    assert "rank 1: 1" in finding.message and "too small or too narrow" in finding.message
    # after unify -u the expert has its global number
    unify(tmp_path / "s", tmp_path / "u", ranks=1, expert_parallel=True)
    finding = next(f for f in check(tmp_path / "u").findings if f.code == "unrouted-expert")
    assert "(experts 3)" in finding.message


def test_expert_parallel_set_never_unified(make_set) -> None:
    d = make_set(world=4, nodes_fn=ep_nodes)
    assert _codes(check(d))["expert-parallel"] is Severity.WARNING
    assert _codes(check(d, world=4))["expert-parallel"] is Severity.WARNING
    report = check(d, world=8)
    assert _codes(report)["expert-parallel"] is Severity.ERROR
    assert "unify -r 1 -u, then expand -w N" in report.render()


def test_expanded_set_and_target_world(make_set, tmp_path: Path) -> None:
    d = make_set(world=4, nodes_fn=ep_nodes)
    unify(d, tmp_path / "u", ranks=1, expert_parallel=True)
    expand(tmp_path / "u", tmp_path / "e", 4)
    assert _codes(check(tmp_path / "e"))["expanded"] is Severity.INFO
    assert _codes(check(tmp_path / "e", world=2))["target-world"] is Severity.ERROR
    assert "target-world" not in _codes(check(tmp_path / "u", world=1))


def test_dense_set_for_another_world(make_set) -> None:
    report = check(make_set(world=4), world=2)
    finding = next(f for f in report.findings if f.code == "target-world")
    assert "unify -r 2" in finding.message


def _hw_scales(tmp_path: Path, exponents: list[int], dirname: str = "s") -> Path:
    d = tmp_path / dirname
    nodes = {f"n{i}": {"inputs": [[[1.0]]]} for i in range(len(exponents))}
    write_rank(d, 0, 1, nodes)
    scales = {
        f"n{i}": {"inputs": [2.0**e], "outputs": [2.0**e], "params": {}}
        for i, e in enumerate(exponents)
    }
    write_rank(d, 0, 1, scales, method="MAXABS_HW")
    return d


def test_gaudi3_scales_on_a_gaudi2_target(tmp_path: Path) -> None:
    d = _hw_scales(tmp_path, [-3, 0, 5, 7])
    report = check(d, device="g2")
    finding = next(f for f in report.findings if f.code == "device-mismatch")
    assert "computed for g3" in finding.message and "240 vs" not in finding.message
    assert check(d, device="g3").ok


def test_gaudi2_scales_on_a_gaudi3_target(tmp_path: Path) -> None:
    d = _hw_scales(tmp_path, [-8, -4, 0, 4] * 5)
    assert _codes(check(d, device="g3"))["device-mismatch"] is Severity.ERROR
    assert "device-mismatch" not in _codes(check(d, device="g2"))


def test_device_from_the_directory_name(tmp_path: Path) -> None:
    d = _hw_scales(tmp_path / "model", [0], dirname="g3")
    assert _codes(check(d, device="g2"))["device-mismatch"] is Severity.ERROR


def test_stale_scale_files(make_set) -> None:
    d = make_set(world=1, scales=True)
    old = (d / f"{PREFIX}_0_1.json").stat().st_mtime - 100
    for p in d.glob("*MAXABS*"):
        os.utime(p, (old, old))
    assert _codes(check(d))["stale-scales"] is Severity.WARNING


def test_report_as_json(make_set) -> None:
    report = check(make_set(world=2))
    data = json.loads(report.to_json())
    assert data["ok"] is True and data["errors"] == 0
    assert {"severity", "code", "message", "location"} == set(data["findings"][0])


def test_check_of_one_file_checks_its_set(make_set) -> None:
    d = make_set(world=2)
    report = check(d / f"{PREFIX}_0_2.json")
    assert [s["world"] for s in report.sets] == [2]


def test_no_mod_list(make_set) -> None:
    d = make_set(world=1, mod_lists=False)
    assert _codes(check(d))["no-mod-list"] is Severity.INFO


def test_values_equal_between_json_and_npz_written_by_inc(make_set) -> None:
    d = make_set(world=1)
    data = np.load(d / f"{PREFIX}_0_1.npz", allow_pickle=True)["arr_0"].item()
    assert data["LocalRank"] == 0
    assert "npz-json-mismatch" not in _codes(check(d))


def test_gaudi2_output_scales_are_products_and_do_not_make_a_set_gaudi3(tmp_path: Path) -> None:
    """A linear's output scale is input x weight scale (2^-4 * 2^-8 = 2^-12): not a HW step."""
    d = tmp_path / "g2prod"
    d.mkdir()
    exponents = [-8, -4, 0, 4] * 5
    write_rank(d, 0, 1, {f"n{i}": {"inputs": [[[1.0]]]} for i in range(len(exponents))})
    scales = {
        f"n{i}": {"inputs": [2.0**e], "outputs": [2.0 ** (e - 8)], "params": {"weight": 2.0**-8}}
        for i, e in enumerate(exponents)
    }
    write_rank(d, 0, 1, scales, method="MAXABS_HW")
    assert "device-mismatch" not in _codes(check(d, device="g2"))
    assert _codes(check(d, device="g3"))["device-mismatch"] is Severity.ERROR
