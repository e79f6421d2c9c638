"""Gaudi preflight: a required variable that is set reads as set (the probe gathers the cell's
required names, as presence only), and one that is not set fails naming the node."""

from __future__ import annotations

from pathlib import Path

from harness import cluster
from harness.backends.base import CheckStatus
from harness.backends.gaudi import GaudiBackend
from harness.backends.gaudi.node_checks import required_env
from harness.backends.gaudi.preflight import NODE_ENV
from harness.matrix import load_matrix

MATRIX = """
name: t
backend: gaudi
models: {m: {hub_id: org/m}}
axes: {device: [g2]}
settings:
  preflight: {required_env: [HARNESS_TEST_TOKEN, HARNESS_TEST_UNSET], nic_check: false}
"""


def test_required_env_set_on_this_host_reads_as_set_and_its_value_is_not_gathered(
    tmp_path: Path, monkeypatch
):
    assert "HARNESS_TEST_TOKEN" not in NODE_ENV  # not one of the fixed names
    monkeypatch.setenv("HARNESS_TEST_TOKEN", "s3cret")
    monkeypatch.delenv("HARNESS_TEST_UNSET", raising=False)
    path = tmp_path / "m.yaml"
    path.write_text(MATRIX)
    cell = load_matrix(path).cells[0]
    spec = GaudiBackend().preflight_spec(cell)
    spec["commands"] = {}  # no hl-smi here: only the env part of the probe
    facts = cluster.local_facts(spec)
    assert facts["env_set"] == {"HARNESS_TEST_TOKEN": True, "HARNESS_TEST_UNSET": False}
    assert "s3cret" not in repr(facts)
    checks = {c.name: c for c in required_env(cell.settings.preflight.required_env,
                                               {"local": facts})}
    assert checks["env.HARNESS_TEST_TOKEN"].status is CheckStatus.PASS
    assert checks["env.HARNESS_TEST_UNSET"].status is CheckStatus.FAIL
    assert checks["env.HARNESS_TEST_UNSET"].message == "not set on local"


def test_required_env_names_each_node_it_is_missing_on():
    nodes = {
        "10.0.0.1/a": {"env_set": {"HF_TOKEN": True}},
        "10.0.0.2/b": {"env_set": {"HF_TOKEN": False}},
    }
    [check] = required_env(["HF_TOKEN"], nodes)
    assert check.status is CheckStatus.FAIL
    assert check.message == "not set on 10.0.0.2/b"
    assert check.hint == "export HF_TOKEN=... on every node before `ray start`"


def test_facts_recorded_before_env_set_existed_still_read_the_gathered_value():
    [check] = required_env(["QUANT_CONFIG"], {"local": {"env": {"QUANT_CONFIG": "/q.json"}}})
    assert check.status is CheckStatus.PASS
