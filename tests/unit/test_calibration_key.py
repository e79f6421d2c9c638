"""Calibration keys, cache entries, locks, the output layout and set summaries."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time

import pytest

from harness.calibration import key as keys
from harness.calibration import layout
from harness.calibration.summary import summarize
from harness.errors import HarnessError

BASE = keys.CalibrationKey(
    model="tiny-llama", model_fingerprint="f", device="cpu", dataset="d", samples=64,
    max_seq_len=256, measure_config="{}", quant_config="{}", tp=2, ep=1, backend="cpu",
)


def test_the_digest_is_stable_and_the_dir_name_readable():
    assert BASE.digest == dataclasses.replace(BASE).digest
    assert BASE.dirname.startswith("tiny-llama-cpu-tp2-ep1-")
    assert BASE.dirname.endswith(BASE.digest[:12])


@pytest.mark.parametrize(
    "change",
    [{"samples": 32}, {"dataset": "other"}, {"device": "g2"}, {"tp": 1}, {"ep": 2},
     {"measure_config": '{"x":1}'}, {"quant_config": '{"x":1}'}, {"model_fingerprint": "g"}],
    ids=lambda c: next(iter(c)),
)
def test_every_field_of_the_key_changes_the_digest(change):
    assert dataclasses.replace(BASE, **change).digest != BASE.digest


def test_the_model_fingerprint_changes_when_weights_change(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"a")
    before = keys.model_fingerprint(str(tmp_path))
    time.sleep(0.01)
    (tmp_path / "model.safetensors").write_bytes(b"ab")
    assert keys.model_fingerprint(str(tmp_path)) != before
    assert keys.model_fingerprint("meta-llama/Llama-3.1-8B") == "id:meta-llama/Llama-3.1-8B"


def test_an_unreadable_dataset_is_named(tmp_path):
    with pytest.raises(HarnessError, match="cannot read the calibration dataset"):
        keys.file_digest(tmp_path / "missing.pkl")


def test_a_held_lock_times_out_with_what_to_do(tmp_path):
    lock = tmp_path / "entry.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from filelock import FileLock; "
         f"l = FileLock({str(lock)!r}); l.acquire(); print('held', flush=True); time.sleep(30)"],
        stdout=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(HarnessError, match="holds this calibration's lock"), \
                keys.locked(lock, timeout_s=0.2):
            pass
    finally:
        holder.kill()
        holder.wait()
    with keys.locked(lock, timeout_s=5):  # released when its holder is gone
        pass


def test_done_records_are_written_atomically_and_read_back(tmp_path):
    assert keys.read_done(tmp_path) is None
    keys.write_json(tmp_path / keys.DONE, {"derived": {}})
    assert keys.read_done(tmp_path) == {"derived": {}}
    assert not list(tmp_path.glob(".*tmp"))


def test_the_layout_is_calibrate_model_shs():
    lay = layout.OutputLayout(__import__("pathlib").Path("/o"), "tiny-moe", "g2")
    assert str(lay.measurement_dir) == "/o/tiny-moe/g2"
    assert str(lay.dump_stats_path) == "/o/tiny-moe/g2/inc_output"
    assert str(lay.measure_config) == "/o/tiny-moe/maxabs_measure_g2.json"
    assert str(lay.quant_config) == "/o/tiny-moe/maxabs_quant_g2.json"
    assert layout.range_name(1, 2) == "inc_output_hooks_maxabs_1_2.json"
    assert layout.mod_list_name(1, 2) == "inc_output_hooks_maxabs_1_2_mod_list.json"


def test_range_and_scale_files_are_found_by_world_and_rank(tmp_path):
    for name in ["inc_output_hooks_maxabs_0_2.json", "inc_output_hooks_maxabs_1_2.json",
                 "inc_output_hooks_maxabs_0_1.json", "inc_output_hooks_maxabs_0_2_mod_list.json",
                 "inc_output_hooks_maxabs_MAXABS_HW_1_2.json",
                 "inc_output_hooks_maxabs_MAXABS_HW_0_2.json"]:
        (tmp_path / name).write_text("{}")
    assert [p.name for p in layout.range_files(tmp_path, 2)] == [
        "inc_output_hooks_maxabs_0_2.json", "inc_output_hooks_maxabs_1_2.json"]
    assert [p.name for p in layout.scale_files(tmp_path, 2)] == [
        "inc_output_hooks_maxabs_MAXABS_HW_0_2.json", "inc_output_hooks_maxabs_MAXABS_HW_1_2.json"]
    assert layout.worlds_present(tmp_path) == [1, 2]


def _rank_file(path, rank, local, amax):
    op = "model.layers.0.mlp.experts.moe_op"
    nodes = {"model.layers.0.self_attn.qkv_proj": {"inputs": [[[1.0]]]},
             op: {"inputs": [[[1.0]]], "outputs": [[[2.0]]] + [[[a]] for a in amax]}}
    for i in range(local):
        nodes[f"{op}.w13_list.{i}"] = {"inputs": [[[0.0]]], "params": {"weight": [[0.1]]}}
        nodes[f"{op}.w2_list.{i}"] = {"inputs": [[[0.0]]], "params": {"weight": [[0.1]]}}
    f = path / f"r{rank}.json"
    f.write_text(json.dumps({"LocalRank": rank, "Mode": "DynamicRange", "Nodes": nodes}))
    return f


def test_summary_counts_global_experts_of_an_ep_set_and_the_routed_ones(tmp_path):
    files = [_rank_file(tmp_path, 0, 4, [1, 1, 0, 1]), _rank_file(tmp_path, 1, 4, [1, 1, 1, 1])]
    s = summarize(files, experts_total=8)
    assert (s.world, s.moe_layers, s.experts_covered, s.experts_routed) == (2, 1, 8, 7)
    assert s.experts_extra == 0
    assert s.nodes_measured == 10  # qkv, moe_op, 4 w13 + 4 w2 (local names repeat per rank)


def test_summary_flags_expert_slots_beyond_the_models_experts(tmp_path):
    files = [_rank_file(tmp_path, r, 4, [1] * 4) for r in range(3)]
    s = summarize(files, experts_total=8)
    assert (s.experts_covered, s.experts_extra) == (8, 4)


def test_summary_of_a_tp_moe_set_counts_shards_once(tmp_path):
    files = [_rank_file(tmp_path, 0, 8, [1] * 8), _rank_file(tmp_path, 1, 8, [1] * 8)]
    s = summarize(files, experts_total=8)
    assert (s.experts_covered, s.experts_extra) == (8, 0)
