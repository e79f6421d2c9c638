"""Miniature model facts, construction, upcycling and training-data packing."""

from __future__ import annotations

import pytest

from harness import miniature
from harness.errors import HarnessError
from harness.miniature import build


def test_facts_allow_tp2_and_the_moe_allows_ep_2_4_8() -> None:
    for facts in miniature.MODELS.values():
        assert facts.supports_tp(2)
        assert facts.num_heads % facts.num_kv_heads == 0
        assert facts.hidden_size == facts.num_heads * facts.head_dim
    moe = miniature.MODELS["tiny-moe"]
    assert moe.is_moe and moe.num_experts >= 8 and moe.experts_per_token == 2
    assert all(moe.supports_ep(ep) for ep in (1, 2, 4, 8))
    assert not moe.supports_ep(3)
    assert not miniature.MODELS["tiny-llama"].supports_ep(2)
    assert not miniature.MODELS["tiny-llama"].supports_tp(3)


def test_unknown_model_names_the_choices() -> None:
    with pytest.raises(HarnessError, match="Unknown miniature model 'tiny-gpt'.*tiny-llama"):
        miniature.model_dir("tiny-gpt")


def test_model_dir_points_at_committed_weights() -> None:
    for name in miniature.MODELS:
        d = miniature.model_dir(name)
        assert (d / "model.safetensors").is_file()
        assert (d / "tokenizer.json").is_file()
        assert (d / "TRAINING.md").is_file()


@pytest.mark.parametrize("name", sorted(build.MODELS))
def test_hf_config_matches_the_facts(name: str) -> None:
    pytest.importorskip("transformers")
    facts = build.MODELS[name]
    cfg = build.hf_config(name, vocab_size=600, eos_token_id=0, pad_token_id=3)
    assert cfg.model_type == facts.model_type
    assert cfg.num_attention_heads == facts.num_heads
    assert cfg.num_key_value_heads == facts.num_kv_heads
    assert cfg.tie_word_embeddings
    assert getattr(cfg, "num_local_experts", 0) == facts.num_experts


def test_upcycling_copies_attention_and_cuts_experts_from_the_dense_ffn() -> None:
    torch = pytest.importorskip("torch")
    dense = build.build_model("tiny-llama", 64, 0, 3, seed=1)
    moe = build.build_model("tiny-moe", 64, 0, 3, seed=2)
    assert build.init_from(moe, dense) == "upcycle"
    d, m = dense.state_dict(), moe.state_dict()
    for key in ("model.embed_tokens.weight", "model.layers.1.self_attn.k_proj.weight"):
        assert torch.equal(d[key], m[key])
    i = build.MODELS["tiny-moe"].intermediate_size
    gate_up = m["model.layers.2.mlp.experts.gate_up_proj"]
    down = m["model.layers.2.mlp.experts.down_proj"]
    for e in (0, 3, 5):
        s = slice((e % 4) * i, (e % 4 + 1) * i)
        assert torch.equal(gate_up[e, :i], d["model.layers.2.mlp.gate_proj.weight"][s])
        assert torch.equal(gate_up[e, i:], d["model.layers.2.mlp.up_proj.weight"][s])
        assert torch.allclose(down[e], 2 * d["model.layers.2.mlp.down_proj.weight"][:, s])


def test_packed_training_text_tokenizes_like_the_eval_prompt() -> None:
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    from harness.miniature import train

    tok = transformers.AutoTokenizer.from_pretrained(
        str(miniature.model_dir("tiny-llama")), local_files_only=True
    )
    recipe = train.Recipe(model="tiny-llama", batch_size=3, seq_len=256)
    ids, labels = next(train.packed_batches(tok, recipe))
    assert ids.shape == labels.shape == (3, 256)
    for row in ids.tolist():
        seq = [t for t in row if t != tok.pad_token_id]
        text = tok.decode(seq)
        assert text.startswith("Question: ") and text.count("\nAnswer: ") >= 2
        assert tok(text.rstrip("\n"), add_special_tokens=False)["input_ids"] == seq[:-2]
