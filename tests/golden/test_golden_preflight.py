"""Gaudi preflight plans against the seeds: NIC status on the host, hl-smi per node, and the
Ray cluster of seeds 000/003 for cells (or calibrations) that span nodes."""

from __future__ import annotations

import dataclasses
import shlex

import pytest

from harness.backends.gaudi import GaudiBackend
from harness.cell import Cell
from harness.cell import Stage
from harness.matrix import load_matrix

SEED_NIC = "/opt/habanalabs/qual/gaudi2/bin/manage_network_ifs.sh --status"  # seed 000 step 3
SEED_RAY_HEAD = "ray start --head --node-ip-address=192.168.1.101 --port=8850"  # seed 003
SEED_RAY_WORKER = "ray start --address='192.168.1.101:8850'"  # seed 003


@pytest.fixture(autouse=True)
def _no_cluster_env(monkeypatch):
    for var in ("RAY_ADDRESS", "VLLM_HOST_IP"):
        monkeypatch.delenv(var, raising=False)


def cell_of(matrix: str, cell_id: str, **options: str) -> Cell:
    cell = next(c for c in load_matrix(matrix).cells if c.id == cell_id)
    return dataclasses.replace(cell, backend_options=options) if options else cell


def lines(cell: Cell, tmp_path) -> list[tuple[int | None, tuple[str, ...]]]:
    return [(c.node, c.argv) for c in GaudiBackend().plan(cell, Stage.PREFLIGHT, tmp_path)]


def test_two_node_cell_checks_every_node_and_shows_the_seed_ray_cluster(tmp_path):
    cell = cell_of("deepseek-r1-multinode", "deepseek-r1-0528/g2-n2/tp16-ep16/fp8-kv-auto",
                   ray_address="192.168.1.101:8850")  # fmt: skip
    plan = lines(cell, tmp_path)
    nic = tuple(shlex.split(SEED_NIC))
    assert (0, nic) in plan and (1, nic) in plan
    for argv in (("hl-smi", "--fw-version"),
                 ("hl-smi", "-Q", "index,name,bus_id,driver_version", "-f", "csv,noheader")):  # fmt: skip
        assert (0, argv) in plan and (1, argv) in plan
    assert plan[-3:] == [
        (0, tuple(shlex.split(SEED_RAY_HEAD))),
        (1, tuple(shlex.split(SEED_RAY_WORKER))),
        (0, ("ray", "status")),
    ]


def test_four_node_cell_adds_three_workers(tmp_path):
    cell = cell_of("deepseek-r1-multinode", "deepseek-r1-0528/g2-n4/tp32-ep32/fp8-kv-fp8_inc",
                   head_ip="10.0.0.1")  # fmt: skip
    ray = [(n, a) for n, a in lines(cell, tmp_path) if a[0] == "ray"]
    assert ray == [
        (0, ("ray", "start", "--head", "--node-ip-address=10.0.0.1", "--port=6379")),
        (1, ("ray", "start", "--address=10.0.0.1:6379")),
        (2, ("ray", "start", "--address=10.0.0.1:6379")),
        (3, ("ray", "start", "--address=10.0.0.1:6379")),
        (0, ("ray", "status")),
    ]


def test_single_node_gaudi3_cell_runs_here_without_ray(tmp_path):
    plan = lines(cell_of("nightly-g3", "llama-3.1-8b/g3/tp1/fp8-kv-fp8_inc"), tmp_path)
    assert (None, ("/opt/habanalabs/qual/gaudi3/bin/manage_network_ifs.sh", "--status")) in plan
    assert all(node is None for node, _ in plan) and not any(a[0] == "ray" for _, a in plan)


def test_a_tp8_cell_calibrated_at_tp16_needs_the_two_node_ray_cluster(tmp_path):
    plan = lines(cell_of("nightly-g2", "llama-3.1-405b/g2/tp8/fp8-kv-fp8_inc"), tmp_path)
    assert (1, ("ray", "start", "--address=<head-ip>:6379")) in plan


def test_nic_check_can_be_turned_off(tmp_path):
    cell = cell_of("nightly-g2", "llama-3.1-8b/g2/tp1/bf16-kv-auto")
    pre = cell.settings.preflight.model_copy(update={"nic_check": False})
    cell = dataclasses.replace(cell, settings=cell.settings.model_copy(update={"preflight": pre}))
    assert not any("manage_network_ifs.sh" in a[0] for _, a in lines(cell, tmp_path))
