"""A small byte-level BPE tokenizer, trained locally, saved as HF files.

Every digit is its own token (digits are isolated before BPE), there is no
BOS, and the chat template is ChatML (``<|im_start|>role ... <|im_end|>``).
transformers (``AutoTokenizer``) and vLLM load the saved directory offline.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from harness.miniature import synthetic

EOS = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
PAD = "<|pad|>"
SPECIAL_TOKENS: tuple[str, ...] = (EOS, IM_START, IM_END, PAD)
VOCAB_SIZE = 600

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _corpus(n: int, seed: int) -> Iterator[str]:
    for p in synthetic.generate("train", n, seed=seed, unique=False):
        yield f"Question: {p.question}\nAnswer: {p.answer}\n\n"
    yield f"{IM_START}system\n{synthetic.SYSTEM_PROMPT}{IM_END}\n{IM_START}user\n"
    yield "Question: Answer: #### user assistant system\n"


def train_tokenizer(
    out_dir: Path | str, vocab_size: int = VOCAB_SIZE, seed: int = 0, n_texts: int = 20_000
) -> Path:
    """Train the tokenizer on synthetic problems and save it as HF files in ``out_dir``."""
    from tokenizers import Regex
    from tokenizers import Tokenizer
    from tokenizers import decoders
    from tokenizers import models
    from tokenizers import pre_tokenizers
    from tokenizers import trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(n_texts, seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[IM_START, IM_END],
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out))
    return out
