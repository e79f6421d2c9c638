"""Score a miniature model on held-out synthetic problems, as lm-eval's gsm8k does.

The prompt is built like lm-eval's ``gsm8k`` task: ``doc_to_text`` is
``"Question: {question}\\nAnswer:"``, a few-shot example adds ``" " + answer``
(target delimiter), examples are joined by ``"\\n\\n"`` (few-shot delimiter),
few-shot examples come from the train split, generation is greedy and stops
at ``"Question:"``, and the score is the ``strict-match`` exact match: the
first ``#### N`` of the continuation against the gold ``#### N``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.miniature import synthetic

STOP = ("Question:", "</s>", "<|im_end|>")
_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
_IGNORE = (re.compile(","), re.compile(r"\$"), re.compile(r"(?s).*#### "), re.compile(r"\.$"))


def doc_to_text(question: str) -> str:
    """Return lm-eval gsm8k's ``doc_to_text`` for a question."""
    return f"Question: {question}\nAnswer:"


def build_prompt(question: str, shots: Sequence[synthetic.Problem]) -> str:
    """Return the lm-eval gsm8k prompt for ``question`` with the given few-shot examples."""
    parts = [doc_to_text(s.question) + " " + s.answer + "\n\n" for s in shots]
    return "".join(parts) + doc_to_text(question)


def strict_extract(continuation: str) -> str:
    """Return the strict-match answer of a continuation ("[invalid]" when none)."""
    for stop in STOP:
        continuation = continuation.split(stop, 1)[0]
    m = _STRICT.search(continuation)
    return m.group(1) if m else "[invalid]"


def _normalise(text: str) -> str:
    for rx in _IGNORE:
        text = rx.sub("", text)
    return text.strip().lower()


def is_correct(continuation: str, gold_answer: str) -> bool:
    """Apply lm-eval's strict-match filter and exact_match normalisation."""
    return _normalise(strict_extract(continuation)) == _normalise(gold_answer)


def make_prompts(n: int, shots: int, seed: int = 0) -> tuple[list[str], list[synthetic.Problem]]:
    """Return ``n`` held-out prompts (few-shot from the train split) and their problems."""
    tests = synthetic.generate("test", n, seed=seed)
    pool = synthetic.generate("train", 1000, seed=seed)
    rng = random.Random(1234)
    prompts = [build_prompt(p.question, rng.sample(pool, shots) if shots else []) for p in tests]
    return prompts, tests


def generate_greedy(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int = 40,
    batch_size: int = 50,
) -> list[str]:
    """Greedy continuations of ``prompts`` with transformers ``generate`` (left padding)."""
    import torch

    tokenizer.padding_side = "left"
    outs: list[str] = []
    for i in range(0, len(prompts), batch_size):
        enc = tokenizer(list(prompts[i : i + batch_size]), return_tensors="pt", padding=True)
        with torch.inference_mode():
            gen = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                stop_strings=["Question:"],
                tokenizer=tokenizer,
            )
        cut = gen[:, enc["input_ids"].shape[1] :]
        outs.extend(tokenizer.batch_decode(cut, skip_special_tokens=True))
    return outs


def score(model: Any, tokenizer: Any, n: int = 200, shots: int = 3, seed: int = 0) -> float:
    """Return the strict exact match of a loaded model on ``n`` held-out problems."""
    prompts, tests = make_prompts(n, shots, seed)
    conts = generate_greedy(model, tokenizer, prompts)
    return sum(is_correct(c, p.answer) for c, p in zip(conts, tests, strict=True)) / n


def evaluate(
    model_dir: Path | str, n: int = 200, shots: int = 3, seed: int = 0, dtype: str = "float32"
) -> float:
    """Load an HF model directory offline and return its held-out strict exact match.

    The committed weights are bf16. ``dtype="float32"`` (the default) computes with
    them upcast: it scores the same here and runs several times faster on CPUs without
    native bf16 (no AVX512-BF16/AMX). ``"bfloat16"`` computes in bf16, as vLLM serves.
    """
    import torch
    from transformers import AutoModelForCausalLM
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=getattr(torch, dtype), local_files_only=True
    )
    model.eval()
    return score(model, tok, n=n, shots=shots, seed=seed)
