"""The committed miniature models load offline with transformers and still score."""

from __future__ import annotations

import json

import pytest

from harness import miniature

pytestmark = pytest.mark.integration

# Each checkpoint records its held-out strict exact match (200 problems, 3-shot) in
# training.json; 40 problems keep this test short, so allow ~2 standard errors below it.
# A broken checkpoint (near 0) still fails clearly.
TOLERANCE = 0.15


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.mark.parametrize("name", sorted(miniature.MODELS))
def test_committed_model_matches_its_facts(name: str) -> None:
    facts = miniature.MODELS[name]
    cfg = json.loads((miniature.model_dir(name) / "config.json").read_text())
    assert cfg["architectures"] == [facts.architecture]
    assert cfg["num_attention_heads"] == facts.num_heads
    assert cfg["num_key_value_heads"] == facts.num_kv_heads
    assert cfg.get("num_local_experts", 0) == facts.num_experts
    assert cfg["dtype"] == "bfloat16"
    assert facts.supports_tp(2)
    if facts.is_moe:
        assert all(facts.supports_ep(ep) for ep in (2, 4, 8))
    size = sum(p.stat().st_size for p in miniature.model_dir(name).iterdir())
    assert size < 10 * 2**20


@pytest.mark.parametrize("name", sorted(miniature.MODELS))
def test_committed_tokenizer_loads_with_chat_template(name: str) -> None:
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(
        str(miniature.model_dir(name)), local_files_only=True
    )
    ids = tok("Answer: 12 + 305 = 317", add_special_tokens=False)["input_ids"]
    pieces = [tok.decode([i]) for i in ids]
    assert {"1", "2", "3", "0", "5", "7"} <= set(pieces)
    assert all(len(p.strip()) <= 1 for p in pieces if any(c.isdigit() for c in p))
    text = tok.apply_chat_template(
        [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert text.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("name", sorted(miniature.MODELS))
def test_committed_model_still_scores_on_held_out_problems(name: str) -> None:
    pytest.importorskip("torch")
    recorded = json.loads((miniature.model_dir(name) / "training.json").read_text())
    floor = recorded["eval"]["strict_em_3shot"] - TOLERANCE
    em = miniature.evaluate(miniature.model_dir(name), n=40, shots=3)
    assert em >= floor, f"{name}: strict exact match {em:.3f} < {floor:.3f} on 40 held-out problems"
