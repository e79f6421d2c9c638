"""Step 1 on CPU: the calibration pickle, step-1's sampling and chat formatting, tokens."""

from __future__ import annotations

import pickle

import pytest

from harness.calibration import prompts
from harness.errors import HarnessError

ROWS = [{"system_prompt": f"sys {i}", "question": f"q {i}"} for i in range(10)]


def test_a_dataframe_is_shuffled_with_step1s_seed_then_limited(tmp_path):
    pd = pytest.importorskip("pandas")
    path = tmp_path / "d.pkl"
    pd.DataFrame(ROWS).to_pickle(path)
    rows = prompts.read_rows(path, 3)
    expected = pd.DataFrame(ROWS).sample(frac=1, random_state=42).head(3)
    assert [r["question"] for r in rows] == list(expected["question"])


def test_a_list_of_dicts_is_taken_in_order(tmp_path):
    path = tmp_path / "d.pkl"
    path.write_bytes(pickle.dumps(ROWS))
    assert [r["question"] for r in prompts.read_rows(path, 2)] == ["q 0", "q 1"]


def test_rows_without_the_documented_fields_are_refused(tmp_path):
    path = tmp_path / "d.pkl"
    path.write_bytes(pickle.dumps([{"prompt": "x"}]))
    with pytest.raises(HarnessError, match="lack fields.*system_prompt"):
        prompts.read_rows(path, None)


def test_an_unreadable_pickle_is_named(tmp_path):
    path = tmp_path / "d.pkl"
    path.write_bytes(b"not a pickle")
    with pytest.raises(HarnessError, match="cannot read the calibration pickle"):
        prompts.read_rows(path, None)


def test_the_conversation_puts_the_system_prompt_first_except_for_mixtral():
    row = {"system_prompt": "S", "question": "Q"}
    assert [m["role"] for m in prompts.conversation(row, "tiny-llama")] == ["system", "user"]
    assert [m["content"] for m in prompts.conversation(row, "Mixtral-8x7B")] == ["Q", "S"]


def test_templates_render_like_transformers_with_trimmed_blocks():
    template = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    text = prompts.render(template, [{"role": "system", "content": "S"},
                                     {"role": "user", "content": "Q"}])
    assert text == "<|system|>S\n<|user|>Q\n"


def test_prompts_are_tokenized_with_the_models_template_and_truncated(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    alphabet = tokenizers.pre_tokenizers.ByteLevel.alphabet()
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(
        vocab={ch: i for i, ch in enumerate(sorted(alphabet))}, merges=[]))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "chat_template.jinja").write_text(
        "{% for m in messages %}{{ m['content'] }};{% endfor %}")
    data = tmp_path / "d.pkl"
    data.write_bytes(pickle.dumps(ROWS))
    ids = prompts.token_ids(tmp_path, data, 2, 5, "tiny-llama")
    assert len(ids) == 2 and all(len(s) == 5 for s in ids)
    full = prompts.token_ids(tmp_path, data, 1, None, "tiny-llama")[0]
    assert len(full) == len("sys 0;q 0;")  # byte-level: one token per byte
