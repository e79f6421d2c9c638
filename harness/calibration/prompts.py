"""Step 1 of calibrate_model.sh on CPU: the calibration pickle -> chat-formatted prompt token ids.

As vllm-gaudi's step-1: read the pickle (`system_prompt`, `question`), shuffle with
random_state=42 and keep `-l` rows, format each row with the model's chat template (system +
user turn; user + assistant for models named *mixtral*), tokenize. Uses `tokenizers` and jinja2
directly: importing transformers costs a rank worker 8-15 s on this box.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

from harness.errors import HarnessError

FIELDS = ("system_prompt", "question")


def read_rows(path: Path, limit: int | None) -> list[dict[str, Any]]:
    """Rows of the pickle (a pandas DataFrame like the MLCommons one, or a list of dicts)."""
    try:
        with Path(path).open("rb") as fh:
            data = pickle.load(fh)  # noqa: S301 - the harness's own or the user's dataset
    except (OSError, pickle.UnpicklingError, EOFError) as exc:
        raise HarnessError(f"{path}: cannot read the calibration pickle ({exc})") from None
    if hasattr(data, "sample") and hasattr(data, "to_dict"):  # pandas DataFrame
        missing = [f for f in FIELDS if f not in data.columns]
        if missing:
            raise HarnessError(f"{path}: calibration pickle lacks columns {missing}")
        if limit:
            data = data.sample(frac=1, random_state=42).head(limit)
        return list(data.to_dict("records"))
    if isinstance(data, list) and all(isinstance(r, dict) for r in data):
        missing = [f for f in FIELDS if data and f not in data[0]]
        if missing:
            raise HarnessError(f"{path}: calibration rows lack fields {missing}")
        return data[:limit] if limit else data
    raise HarnessError(
        f"{path}: expected a pickled DataFrame or list of dicts with {FIELDS}, "
        f"got {type(data).__name__}"
    )


def _template(model_dir: Path) -> str | None:
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    cfg = model_dir / "tokenizer_config.json"
    if cfg.is_file():
        value = json.loads(cfg.read_text(encoding="utf-8")).get("chat_template")
        if isinstance(value, str):
            return value
    return None


def render(template: str, messages: list[dict[str, str]]) -> str:
    """Render a chat template the way transformers does (sandboxed jinja2, trimmed blocks)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise HarnessError(f"chat template: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, add_generation_prompt=False)


def conversation(row: dict[str, Any], model_name: str) -> list[dict[str, str]]:
    if "mixtral" in model_name.lower():  # step-1 puts the system prompt after the question
        return [{"role": "user", "content": str(row["question"])},
                {"role": "assistant", "content": str(row["system_prompt"])}]
    return [{"role": "system", "content": str(row["system_prompt"])},
            {"role": "user", "content": str(row["question"])}]


def token_ids(model_dir: Path, dataset: Path, limit: int | None, max_len: int | None,
              model_name: str) -> list[list[int]]:
    """Prompt token ids for the calibration forward passes."""
    from tokenizers import Tokenizer

    model_dir = Path(model_dir)
    tok_file = model_dir / "tokenizer.json"
    if not tok_file.is_file():
        raise HarnessError(f"{model_dir}: no tokenizer.json (a fast HF tokenizer is needed)")
    tok = Tokenizer.from_file(str(tok_file))
    template = _template(model_dir)
    out = []
    for row in read_rows(dataset, limit):
        if template:
            text = render(template, conversation(row, model_name))
        else:  # step-1's fallback for models without a chat template
            text = f"{row['system_prompt']}. {row['question']}"
        ids = tok.encode(text).ids
        out.append(ids[:max_len] if max_len else ids)
    if not out:
        raise HarnessError(f"{dataset}: the calibration set is empty")
    return out
