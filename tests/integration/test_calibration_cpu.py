"""Real INC calibration on CPU: gloo rank workers, unify/expand, the traps, the stage's figures.

Uses the trained miniatures when `harness.miniature` has them, else small random HF checkpoints
of the same architectures (Llama; Mixtral with 8 experts, top-2) written here. Few samples and
short prompts keep each calibration to ~10-20 s on two cores.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.backends.cpu import CpuBackend
from harness.calibration import service
from harness.calibration.artifacts import CalibrationArtifacts
from harness.calibration.spec import QUANTIZE
from harness.calibration.spec import WorkerSpec
from harness.cell import Cell
from harness.cell import ModelFacts
from harness.cell import Stage
from harness.errors import HarnessError
from harness.settings import CalibrationSettings
from harness.settings import StageSettings
from harness.stages import StageContext

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SAMPLES = 12
MAX_LEN = 48
EXPERTS = 8


def _miniature(name: str) -> Path | None:
    try:
        from harness import miniature

        d = Path(miniature.model_dir(name))
    except (ImportError, AttributeError, KeyError, ValueError, OSError, HarnessError):
        return None
    return d if (d / "config.json").is_file() and (d / "tokenizer.json").is_file() else None


def _random_checkpoint(out: Path, moe: bool, seed: int) -> Path:
    """A small HF checkpoint (config, safetensors, byte-level tokenizer, chat template)."""
    import torch
    from safetensors.torch import save_file
    from tokenizers import Tokenizer
    from tokenizers import models
    from tokenizers import pre_tokenizers

    h, inter, layers, heads, kv, hd, vocab = 64, 128, 2, 4, 2, 16, 300
    g = torch.Generator().manual_seed(seed)

    def w(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * 0.08).to(torch.bfloat16)

    def norm() -> torch.Tensor:
        return (1 + torch.randn(h, generator=g) * 0.1).to(torch.bfloat16)

    t = {"model.embed_tokens.weight": w(vocab, h), "model.norm.weight": norm()}
    for i in range(layers):
        p = f"model.layers.{i}"
        t |= {f"{p}.input_layernorm.weight": norm(), f"{p}.post_attention_layernorm.weight": norm(),
              f"{p}.self_attn.q_proj.weight": w(heads * hd, h),
              f"{p}.self_attn.k_proj.weight": w(kv * hd, h),
              f"{p}.self_attn.v_proj.weight": w(kv * hd, h),
              f"{p}.self_attn.o_proj.weight": w(h, heads * hd)}
        if moe:
            t[f"{p}.block_sparse_moe.gate.weight"] = w(EXPERTS, h)
            for e in range(EXPERTS):
                q = f"{p}.block_sparse_moe.experts.{e}"
                t |= {f"{q}.w1.weight": w(inter // 2, h), f"{q}.w3.weight": w(inter // 2, h),
                      f"{q}.w2.weight": w(h, inter // 2)}
        else:
            t |= {f"{p}.mlp.gate_proj.weight": w(inter, h), f"{p}.mlp.up_proj.weight": w(inter, h),
                  f"{p}.mlp.down_proj.weight": w(h, inter)}
    out.mkdir(parents=True)
    save_file(t, str(out / "model.safetensors"))
    config = {
        "architectures": ["MixtralForCausalLM" if moe else "LlamaForCausalLM"],
        "model_type": "mixtral" if moe else "llama", "hidden_size": h,
        "intermediate_size": inter // 2 if moe else inter, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": hd,
        "rms_norm_eps": 1e-5, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        "vocab_size": vocab, "tie_word_embeddings": True, "max_position_embeddings": 512,
        "hidden_act": "silu", "torch_dtype": "bfloat16",
    }
    if moe:
        config |= {"num_local_experts": EXPERTS, "num_experts_per_tok": 2}
    (out / "config.json").write_text(json.dumps(config))
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.save(str(out / "tokenizer.json"))
    (out / "chat_template.jinja").write_text(
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}")
    return out


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("calibration")


@pytest.fixture(scope="module")
def models(workspace) -> dict[str, Path]:
    found = {n: _miniature(n) for n in ("tiny-llama", "tiny-moe")}
    return {
        "dense": found["tiny-llama"] or _random_checkpoint(workspace / "tiny-llama", False, 1),
        "moe": found["tiny-moe"] or _random_checkpoint(workspace / "tiny-moe", True, 2),
    }


@pytest.fixture(scope="module")
def dataset(workspace) -> Path:
    rows = [{"system_prompt": "Solve the problem and end with '#### <answer>'.",
             "question": f"Mia has {i} apples and buys {3 * i % 17} more. How many now?"}
            for i in range(40)]
    path = workspace / "calibration.pkl"
    path.write_bytes(pickle.dumps(rows))
    return path


def calibration_cell(models, dataset, kind: str, tp: int = 1, ep: int = 1, **settings) -> Cell:
    moe = kind == "moe"
    facts = ModelFacts(name=models[kind].name, path=str(models[kind]),
                       architecture="mixtral" if moe else "llama", moe=moe,
                       num_experts=EXPERTS if moe else 0)
    cs = CalibrationSettings(dataset=str(dataset), samples=SAMPLES, max_seq_len=MAX_LEN,
                             **settings)
    return Cell(model=facts, device="cpu", tp=tp, ep=ep, quantization="fp8",
                kv_cache_dtype="fp8", settings=StageSettings(calibration=cs))


@pytest.fixture(scope="module")
def calibrate(workspace, models, dataset):
    def run(kind: str, tp: int = 1, ep: int = 1, **settings) -> CalibrationArtifacts:
        cell = calibration_cell(models, dataset, kind, tp, ep, **settings)
        return service.ensure(cell, CpuBackend(), workspace / "cache")

    return run


def nodes(path: Path) -> dict:
    return json.loads(path.read_text())["Nodes"]


def value(entry) -> float:
    while isinstance(entry, list):
        entry = entry[0]
    return float(entry)


def bf16_ulp(x: float) -> float:
    return 2.0 ** (math.floor(math.log2(abs(x))) - 7) if x else 0.0


def test_the_vllm_style_model_computes_what_transformers_computes(models):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    from harness.calibration import checkpoint
    from harness.calibration import vllm_model

    ids = torch.randint(0, 250, (1, 23), generator=torch.Generator().manual_seed(0))
    for kind in ("dense", "moe"):
        hf = AutoModelForCausalLM.from_pretrained(models[kind], dtype=torch.float32).eval()
        weights, cfg = checkpoint.load(models[kind], torch.float32)
        ours = vllm_model.build(weights, cfg, vllm_model.Shard())
        with torch.no_grad():
            expected, got = hf(ids).logits, ours(ids)
        assert torch.allclose(expected, got, atol=1e-4, rtol=1e-4), kind


def test_dense_tp2_unified_to_tp1_matches_a_tp1_calibration(calibrate):
    # the TP1 reference is the Gaudi2-target calibration: same measure config, same ranges
    tp1 = calibrate("dense", tp=1, target_device="g2")
    tp2 = calibrate("dense", tp=1, calibrate_tp=2, unify_ranks=1)
    assert not tp1.derived and tp2.derived and tp2.calibrated_world == 2
    assert sorted(p.name for p in tp2.source_dir.glob("*_2.json")) == [
        "inc_output_hooks_maxabs_0_2.json", "inc_output_hooks_maxabs_1_2.json",
        "inc_output_hooks_maxabs_MAXABS_POW2_0_2.json",
        "inc_output_hooks_maxabs_MAXABS_POW2_1_2.json"]
    a, b = nodes(tp1.range_files[0]), nodes(tp2.range_files[0])
    assert set(a) == set(b) and "model.layers.0.self_attn.qkv_proj" in a and "lm_head" in a
    for name in a:
        assert b[name]["params"]["weight"] == a[name]["params"]["weight"], name
        x, y = value(a[name]["inputs"]), value(b[name]["inputs"])
        assert abs(x - y) <= 2 * bf16_ulp(max(x, y)), (name, x, y)


def test_moe_ep2_unified_with_u_has_every_expert_once_at_its_global_index(calibrate):
    ep2 = calibrate("moe", tp=1, calibrate_tp=2, calibrate_ep=2, unify_ranks=1)
    tp1 = calibrate("moe", tp=1)
    assert ep2.derivation == ("unify -r 1 -u",)
    ranks = [nodes(p) for p in sorted(ep2.source_dir.glob("inc_output_hooks_maxabs_?_2.json"))]
    unified, reference = nodes(ep2.range_files[0]), nodes(tp1.range_files[0])
    ops = sorted(n for n in unified if n.endswith(".moe_op"))
    assert ops and all(len(unified[op]["outputs"]) == 1 + EXPERTS for op in ops)
    for op in ops:
        assert all(len(r[op]["outputs"]) == 1 + EXPERTS // 2 for r in ranks)
        experts = sorted(int(n.rsplit(".", 1)[1]) for n in unified if n.startswith(f"{op}.w13"))
        assert experts == list(range(EXPERTS))  # each global expert exactly once
        for g in range(EXPERTS):
            rank, local = ranks[g // 4], g % 4
            for kind in ("w13_list", "w2_list"):
                node = unified[f"{op}.{kind}.{g}"]
                assert node["params"] == rank[f"{op}.{kind}.{local}"]["params"]
                assert node["params"] == reference[f"{op}.{kind}.{g}"]["params"]  # same weights
                assert value(node["inputs"]) == 0.0
            assert unified[op]["outputs"][1 + g] == rank[op]["outputs"][1 + local]
        assert value(unified[op]["outputs"][0]) == max(value(r[op]["outputs"][0]) for r in ranks)


def test_a_one_rank_moe_calibration_expands_to_ep2_and_the_stage_records_it(calibrate,
                                                                            workspace):
    from harness.measurements import check

    a = calibrate("moe", tp=2, ep=2, calibrate_tp=1, calibrate_ep=1)
    source = nodes(calibrate("moe", tp=1).range_files[0])
    assert a.derived and a.world == 2 and a.derivation == ("expand -w 2",)
    assert len(a.scale_files) == 2  # quantized again at the EP2 layout
    for rank, path in enumerate(a.range_files):
        expanded = nodes(path)
        op = "model.layers.0.mlp.experts.moe_op"
        assert expanded[op]["outputs"][0] == source[op]["outputs"][0]
        assert len(expanded[op]["outputs"]) == 1 + EXPERTS // 2  # this rank's experts only
        for i in range(EXPERTS // 2):
            g = rank * EXPERTS // 2 + i
            assert expanded[op]["outputs"][1 + i] == source[op]["outputs"][1 + g]
        # step 6 keeps every node as is (INC takes expert weight scales from the weights)
        assert {n for n in expanded if ".w13_list." in n} == {n for n in source if ".w13_list." in n}
    assert check(a.measurement_dir, world=2).ok

    cell = Cell(model=ModelFacts(name="tiny-moe", path="x", moe=True, num_experts=EXPERTS),
                device="cpu", tp=2, ep=2, quantization="fp8", kv_cache_dtype="fp8")
    ctx = StageContext(cell=cell, stage=Stage.CALIBRATION, backend=CpuBackend(),
                       workdir=workspace / "stage", cache_dir=workspace / "cache")
    from harness.stages import calibration as stage

    stage.run(ctx, calibration=a)
    m = ctx.recorder.metrics
    assert m["derived"] is True and m["check_ok"] is True and m["world"] == 2
    assert m["experts_covered"] == EXPERTS and m["experts_extra"] == 0
    assert m["nodes_measured"] > 0 and m["time_s"] > 0 and m["qdq_rel_err"] < 0.5
    assert (workspace / "stage" / "calibration.json").is_file()


def test_a_second_ensure_reuses_the_cache_entry(calibrate):
    first = calibrate("dense", tp=1, target_device="g2")
    done = first.cache_entry / "done.json"
    before = (done.stat().st_mtime_ns, sorted(p.name for p in (first.cache_entry / "logs").iterdir()))
    again = calibrate("dense", tp=1, target_device="g2")
    assert again == first
    assert (done.stat().st_mtime_ns, sorted(p.name for p in (first.cache_entry / "logs").iterdir())) == before


def test_the_plan_shows_the_quant_config_a_run_serves_with(calibrate, models, dataset, workspace):
    backend = CpuBackend()
    for kind, tp, ep, extra in (("dense", 1, 1, {}),
                                ("moe", 2, 2, {"calibrate_tp": 1, "calibrate_ep": 1})):
        served = calibrate(kind, tp=tp, ep=ep, **extra).quant_config
        cell = calibration_cell(models, dataset, kind, tp, ep, **extra)
        # --plan's cache is <workdir>/cache, where `calibrate` put its entries
        assert service.planned_quant_config(cell, backend, workspace) == served
        plan_env = backend.serve_command(cell, 8000, None, workspace).env
        assert plan_env["QUANT_CONFIG"] == str(served) and served.is_file()


def g2_scale(maxabs: float, backoff: float) -> float:
    """Gaudi2's hardware-aligned scale, computed here (fullscale 240, exponents -8, -4, 0, 4)."""
    pow2 = math.ceil(math.log2(maxabs / (240.0 * backoff))) if maxabs else -100
    return 2.0 ** min(max(math.ceil(pow2 / 4) * 4, -8), 4)


def test_a_gaudi2_target_gets_gaudi2s_hardware_aligned_scales(calibrate):
    from harness.measurements import check

    a = calibrate("dense", tp=1, target_device="g2")
    assert a.device == "g2" and a.device_for_scales == "GAUDI2" and a.scale_method == "maxabs_hw"
    assert a.measurement_dir.name == "g2"
    assert a.scale_files[0].name == "inc_output_hooks_maxabs_MAXABS_HW_0_1.json"
    ranges = nodes(a.range_files[0])
    for name, node in nodes(a.scale_files[0]).items():
        assert value(node["inputs"]) == g2_scale(value(ranges[name]["inputs"]), 0.25), name
        weight = value(node["params"]["weight"])
        assert weight == g2_scale(value(ranges[name]["params"]["weight"]), 0.5), name
    # check(device="g2") would report g3 here: it reads the linear output scales (input x
    # weight scale, e.g. 2^-4 * 2^-8 = 2^-12) as hardware-aligned scales (toolkit issue)
    assert check(a.measurement_dir, world=1).ok


def test_quantize_recomputes_a_stale_scale_file_instead_of_reusing_it(calibrate, workspace):
    a = calibrate("dense", tp=1, target_device="g2")
    stale = workspace / "stale"
    shutil.copytree(a.measurement_dir, stale / "cpu")
    scale = stale / "cpu" / a.scale_files[0].name
    good = json.loads(scale.read_text())["Nodes"]
    _poison(scale)
    config = json.loads(a.quant_config.read_text())
    config["dump_stats_path"] = str(stale / "cpu" / "inc_output")
    (stale / "quant.json").write_text(json.dumps(config))
    spec = json.loads((a.cache_entry / "work" / "spec.json").read_text())
    spec |= {"steps": [QUANTIZE], "measurement_dir": str(stale / "cpu"),
             "work_dir": str(stale / "work"), "quant_config": str(stale / "quant.json")}
    WorkerSpec.read(_write(stale / "spec.json", spec)).write(stale / "spec.json")
    env = {**os.environ, "WORLD_SIZE": "1", "LOCAL_RANK": "0", "RANK": "0"}
    subprocess.run([sys.executable, "-m", "harness.calibration.worker", "--spec",
                    str(stale / "spec.json"), "--rank", "0"],
                   env=env, check=True, capture_output=True, timeout=600)
    assert json.loads(scale.read_text())["Nodes"] == good


def _write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def _poison(scale: Path) -> None:
    """Scale both files of a scale set by 1024 (INC reads the npz; the json is for people)."""
    import numpy as np

    doc = json.loads(scale.read_text())
    for node in doc["Nodes"].values():
        node["inputs"] = [v * 1024 for v in node["inputs"]]
    scale.write_text(json.dumps(doc))
    npz = scale.with_suffix(".npz")
    data = np.load(npz, allow_pickle=True)["arr_0"].item()
    for node in data["Nodes"].values():
        node["inputs"] = [np.asarray(v) * 1024 for v in node["inputs"]]
    np.savez(npz, data)


def test_no_rank_ever_fell_into_incs_backup_folder_trap(calibrate, workspace):
    calibrate("dense", tp=1, target_device="g2")
    assert not list((workspace / "cache").rglob("backup_*"))
