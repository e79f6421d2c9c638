"""A cached calibration is checked before it is served: a corrupt entry is refused naming the
file and the fix (or recalibrated on request), even when the calibration stage is not run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from harness.backends.cpu import CpuBackend
from harness.calibration import key as keys
from harness.calibration import service
from harness.calibration.recipe import Recipe
from harness.calibration.recipe import Step
from harness.cell import Cell
from harness.cell import ModelFacts
from harness.process import Command
from harness.settings import CalibrationSettings
from harness.settings import StageSettings

# one rank, written as INC writes it: JSON and the NPZ (a pickled dict of float32 arrays)
WRITE_RANK = """
import json, pathlib, sys
import numpy as np
d = pathlib.Path(sys.argv[1]); d.mkdir(parents=True, exist_ok=True)
counter = pathlib.Path(sys.argv[2]); counter.write_text(str(int(counter.read_text() or 0) + 1))
nodes = {"model.layers.0.mlp.down_proj": {"inputs": [[[1.5]]], "params": {"weight": [[0.5]]}}}
doc = {"GlobalRank": None, "LocalRank": 0, "Mode": "DynamicRange", "Nodes": nodes}
(d / "inc_output_hooks_maxabs_0_1.json").write_text(json.dumps(doc))
arrays = {n: {"inputs": [np.array(v["inputs"][0], dtype=np.float32)],
              "params": {"weight": np.array(v["params"]["weight"], dtype=np.float32)}}
          for n, v in nodes.items()}
np.savez(d / "inc_output_hooks_maxabs_0_1.npz", {**doc, "Nodes": arrays})
"""


class OneRankBackend(CpuBackend):
    """The CPU backend with its rank worker replaced by a script writing real files (no INC)."""

    def __init__(self, counter: Path) -> None:
        super().__init__()
        self.counter = counter
        counter.write_text("")

    def calibration_recipe(self, job, derivation):
        real = super().calibration_recipe(job, derivation)
        cmd = Command((sys.executable, "-c", WRITE_RANK, str(real.measurement_dir),
                       str(self.counter)))
        return Recipe((Step("calibrate", (cmd,)),), real.measurement_dir, real.quant_config,
                      real.world, real.writes)


def make_cell(tmp_path: Path) -> Cell:
    (tmp_path / "model").mkdir(exist_ok=True)
    (tmp_path / "d.pkl").write_bytes(b"data")
    cs = CalibrationSettings(dataset=str(tmp_path / "d.pkl"), samples=8)
    return Cell(model=ModelFacts(name="tiny", path=str(tmp_path / "model")), device="cpu",
                quantization="fp8", settings=StageSettings(calibration=cs))


@pytest.fixture
def cached(tmp_path):
    backend = OneRankBackend(tmp_path / "runs")
    cell = make_cell(tmp_path)
    artifacts = service.ensure(cell, backend, tmp_path / "cache")
    assert backend.counter.read_text() == "1"
    return cell, backend, artifacts, tmp_path / "cache"


def test_a_sound_cache_entry_is_served_without_recalibrating(cached):
    cell, backend, a, cache = cached
    assert service.ensure(cell, backend, cache) == a
    assert backend.counter.read_text() == "1"


def _corrupt_quant_config(a):
    a.quant_config.write_text('{"mode": "QUANTIZE", "dump_stats_path": ')
    return a.quant_config, "the quant config is not valid JSON"


def _truncate_range_file(a):
    path = a.range_files[0]
    path.write_text(path.read_text()[:40])
    return path, ""


def _delete_npz(a):
    path = a.range_files[0].with_suffix(".npz")
    path.unlink()
    return a.range_files[0], "npz"


def _delete_ranks(a):
    for path in a.measurement_dir.iterdir():
        path.unlink()
    return a.measurement_dir, "no INC measurement files"


@pytest.mark.parametrize("corrupt", [_corrupt_quant_config, _truncate_range_file, _delete_npz,
                                     _delete_ranks])
def test_a_corrupt_entry_is_refused_naming_the_file_and_the_fix(cached, corrupt):
    cell, backend, a, cache = cached
    path, words = corrupt(a)
    with pytest.raises(keys.InvalidEntry) as info:
        service.ensure(cell, backend, cache)
    text = str(info.value)
    assert text.startswith(f"{path}: ") or text.startswith(f"{path.parent}: "), text
    assert words.lower() in text.lower()
    assert text.endswith(f"the cached calibration {a.cache_entry} cannot be served: delete that "
                         "directory and rerun (the cell calibrates again)")
    assert backend.counter.read_text() == "1"  # not silently recalibrated


def test_recalibrate_invalid_replaces_a_corrupt_entry(cached):
    cell, backend, a, cache = cached
    _corrupt_quant_config(a)
    again = service.ensure(cell, backend, cache, recalibrate_invalid=True)
    assert backend.counter.read_text() == "2"
    assert json.loads(again.quant_config.read_text())["dump_stats_path"] == str(a.dump_stats_path)
    assert keys.entry_problem(again.cache_entry, again.quant_config, again.measurement_dir,
                              again.world, None) is None
