"""Backend registry, Gaudi discovery without Gaudi, and the cpu backend's capabilities."""

from __future__ import annotations

import pytest

from harness import backends
from harness.backends.gaudi import discovery
from harness.cell import Stage
from harness.errors import HarnessError
from harness.matrix import load_matrix


def test_unknown_backend_suggests_a_close_name():
    with pytest.raises(HarnessError, match=r"Unknown backend 'gaudy'\. Did you mean: gaudi\?"):
        backends.get("gaudy")


@pytest.mark.parametrize(
    ("name", "gen"),
    [
        ("HL-225", "g2"),
        ("HL-225D", "g2"),
        ("HL-325L", "g3"),
        ("HL-328", "g3"),
        ("Gaudi3", "g3"),
        ("HL-100", None),
    ],
)
def test_product_names_map_to_generations(name, gen):
    assert discovery.generation_of(name) == gen


def test_hl_smi_csv_names_are_parsed_one_per_line():
    assert discovery.parse_hl_smi_names("HL-225\nHL-225\n\n") == ["HL-225", "HL-225"]


def test_no_gaudi_is_a_reason_not_a_crash(monkeypatch):
    monkeypatch.setattr(discovery, "_via_pyhlml", lambda: None)
    monkeypatch.setattr(discovery.shutil, "which", lambda name: None)
    inv = discovery.discover()
    assert not inv.available
    assert "no Gaudi" in inv.missing_reason and "--backend cpu" in inv.missing_reason


def test_gaudi_cells_skip_with_the_discovery_reason_on_this_host(monkeypatch):
    monkeypatch.setattr(discovery, "_via_pyhlml", lambda: None)
    monkeypatch.setattr(discovery.shutil, "which", lambda name: None)
    backend = backends.get("gaudi")
    cell = load_matrix("nightly-g2").cells[0]
    assert backend.skip_reason(cell, Stage.PREFLIGHT).startswith("gaudi backend: no Gaudi")


def test_a_backend_refuses_cells_of_another_device():
    cpu = backends.get("cpu")
    cell = load_matrix("nightly-g2").cells[0]
    assert "use --backend gaudi" in cpu.skip_reason(cell, Stage.SERVING)


def test_multinode_gaudi_cells_get_lazy_collectives():
    gaudi = backends.get("gaudi")
    cells = load_matrix("deepseek-r1-multinode").cells
    multi = next(c for c in cells if c.nodes > 1)
    single = next(c for c in cells if c.nodes == 1)
    assert gaudi.cell_env(multi)["PT_HPU_ENABLE_LAZY_COLLECTIVES"] == "true"
    assert "PT_HPU_ENABLE_LAZY_COLLECTIVES" not in gaudi.cell_env(single)


def test_cpu_cells_run_offline():
    env = backends.get("cpu").cell_env(load_matrix("smoke-cpu").cells[0])
    assert env["HF_HUB_OFFLINE"] == "1" and env["HF_DATASETS_OFFLINE"] == "1"
