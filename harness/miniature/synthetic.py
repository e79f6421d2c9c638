"""Deterministic generator of GSM8K-format arithmetic word problems.

Each problem has a ``question`` and a worked ``answer`` whose last line is
``#### N``, as in gsm8k. Problems use +, -, and small multiplication, with one
or two steps and operands 0-50 (multiplication factors are small).

Train and test are disjoint by construction: a problem's *key* is its template
and operands (names and objects do not count), and a fixed hash of the key puts
it in the test bucket (1 in ``_TEST_BUCKETS``) or in train. A test problem
therefore never appears in training, whatever seeds the two sides use.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Split = Literal["train", "test"]

_TEST_BUCKETS = 10
SYSTEM_PROMPT = (
    "You are a careful assistant. Solve the arithmetic word problem step by step "
    "and end with a line '#### <answer>'."
)

_PEOPLE: tuple[tuple[str, str], ...] = (
    ("Mia", "She"),
    ("Leo", "He"),
    ("Ana", "She"),
    ("Sam", "He"),
    ("Eva", "She"),
    ("Tom", "He"),
    ("Zoe", "She"),
    ("Max", "He"),
    ("Lily", "She"),
    ("Ben", "He"),
    ("Emma", "She"),
    ("Jack", "He"),
    ("Nora", "She"),
    ("Omar", "He"),
    ("Ruth", "She"),
    ("Ivan", "He"),
    ("Sara", "She"),
    ("Paul", "He"),
    ("Kate", "She"),
    ("Noah", "He"),
)
_THINGS: tuple[str, ...] = (
    "apples",
    "marbles",
    "stickers",
    "books",
    "pencils",
    "coins",
    "cards",
    "eggs",
    "cookies",
    "stamps",
    "shells",
    "candies",
    "toys",
    "flowers",
    "balloons",
    "buttons",
    "oranges",
    "shirts",
    "cups",
    "rocks",
)
_CONTAINERS: tuple[str, ...] = ("box", "bag", "basket", "jar", "pack", "crate")


@dataclass(frozen=True)
class Problem:
    """One word problem: its text, worked answer, value and identity key."""

    question: str
    answer: str
    value: int
    key: str

    def to_json(self) -> dict[str, str]:
        """Return the gsm8k record (``question``, ``answer``)."""
        return {"question": self.question, "answer": self.answer}


@dataclass(frozen=True)
class _Ctx:
    name: str
    pron: str
    thing: str
    box: str

    @property
    def poss(self) -> str:
        return "her" if self.pron == "She" else "his"

    @property
    def low(self) -> str:
        return self.pron.lower()


def _n(rng: random.Random, lo: int = 0, hi: int = 50) -> int:
    return rng.randint(lo, hi)


def _small(rng: random.Random) -> int:
    return rng.randint(2, 9)


def _fin(lines: list[str], value: int) -> str:
    return "\n".join([*lines, f"#### {value}"])


# Each template: (rng, ctx) -> (operands, question, answer lines, value).
_Out = tuple[tuple[int, ...], str, list[str], int]


def _add_get(rng: random.Random, c: _Ctx) -> _Out:
    a, b = _n(rng), _n(rng)
    q = f"{c.name} has {a} {c.thing}. {c.pron} gets {b} more {c.thing}. How many {c.thing} does {c.name} have now?"
    return (a, b), q, [f"{a} + {b} = {a + b}"], a + b


def _add_two_people(rng: random.Random, c: _Ctx) -> _Out:
    a, b = _n(rng), _n(rng)
    q = f"{c.name} picked {a} {c.thing} in the morning and {b} {c.thing} in the afternoon. How many {c.thing} did {c.low} pick in total?"
    return (a, b), q, [f"{a} + {b} = {a + b}"], a + b


def _sub_give(rng: random.Random, c: _Ctx) -> _Out:
    a = _n(rng)
    b = _n(rng, 0, a)
    q = f"{c.name} has {a} {c.thing}. {c.pron} gives {b} {c.thing} to a friend. How many {c.thing} does {c.name} have left?"
    return (a, b), q, [f"{a} - {b} = {a - b}"], a - b


def _sub_diff(rng: random.Random, c: _Ctx) -> _Out:
    a = _n(rng)
    b = _n(rng, 0, a)
    q = f"A shop had {a} {c.thing}. It sold {b} of them. How many {c.thing} does the shop have now?"
    return (a, b), q, [f"{a} - {b} = {a - b}"], a - b


def _mul_boxes(rng: random.Random, c: _Ctx) -> _Out:
    a, b = _small(rng), _n(rng, 1, 12)
    q = f"{c.name} buys {a} {c.box}s of {c.thing}. Each {c.box} has {b} {c.thing}. How many {c.thing} does {c.name} buy?"
    return (a, b), q, [f"{a} * {b} = {a * b}"], a * b


def _mul_days(rng: random.Random, c: _Ctx) -> _Out:
    a, b = _n(rng, 1, 12), _small(rng)
    q = f"{c.name} makes {a} {c.thing} every day. How many {c.thing} does {c.low} make in {b} days?"
    return (a, b), q, [f"{a} * {b} = {a * b}"], a * b


def _add_sub(rng: random.Random, c: _Ctx) -> _Out:
    a, b = _n(rng), _n(rng)
    s = a + b
    d = _n(rng, 0, min(50, s))
    q = (
        f"{c.name} has {a} {c.thing}. {c.pron} buys {b} more and then gives away {d}. "
        f"How many {c.thing} does {c.name} have now?"
    )
    lines = [f"{a} + {b} = {s}", f"{s} - {d} = {s - d}"]
    return (a, b, d), q, lines, s - d


def _sub_add(rng: random.Random, c: _Ctx) -> _Out:
    a = _n(rng)
    b = _n(rng, 0, a)
    d = _n(rng)
    s = a - b
    q = (
        f"{c.name} had {a} {c.thing}. {c.pron} lost {b} of them and then found {d} more. "
        f"How many {c.thing} does {c.name} have now?"
    )
    lines = [f"{a} - {b} = {s}", f"{s} + {d} = {s + d}"]
    return (a, b, d), q, lines, s + d


def _add_add(rng: random.Random, c: _Ctx) -> _Out:
    a, b, d = _n(rng), _n(rng), _n(rng)
    q = (
        f"{c.name} counted {a} red {c.thing}, {b} blue {c.thing} and {d} green {c.thing}. "
        f"How many {c.thing} did {c.low} count?"
    )
    s = a + b
    lines = [f"{a} + {b} = {s}", f"{s} + {d} = {s + d}"]
    return (a, b, d), q, lines, s + d


def _sub_sub(rng: random.Random, c: _Ctx) -> _Out:
    a = _n(rng)
    b = _n(rng, 0, a)
    d = _n(rng, 0, a - b)
    s = a - b
    q = (
        f"{c.name} had {a} {c.thing}. {c.pron} ate {b} of them and gave {d} to {c.poss} sister. "
        f"How many {c.thing} are left?"
    )
    lines = [f"{a} - {b} = {s}", f"{s} - {d} = {s - d}"]
    return (a, b, d), q, lines, s - d


def _mul_add(rng: random.Random, c: _Ctx) -> _Out:
    a, b, d = _small(rng), _n(rng, 1, 12), _n(rng)
    p = a * b
    q = (
        f"{c.name} has {d} {c.thing}. {c.pron} buys {a} {c.box}s with {b} {c.thing} in each {c.box}. "
        f"How many {c.thing} does {c.name} have now?"
    )
    lines = [f"{a} * {b} = {p}", f"{d} + {p} = {d + p}"]
    return (a, b, d), q, lines, d + p


def _mul_sub(rng: random.Random, c: _Ctx) -> _Out:
    a, b = _small(rng), _n(rng, 1, 12)
    p = a * b
    d = _n(rng, 0, min(50, p))
    q = (
        f"{c.name} fills {a} {c.box}s with {b} {c.thing} each. Then {c.low} sells {d} {c.thing}. "
        f"How many {c.thing} does {c.low} have left?"
    )
    lines = [f"{a} * {b} = {p}", f"{p} - {d} = {p - d}"]
    return (a, b, d), q, lines, p - d


_TEMPLATES: dict[str, Callable[[random.Random, _Ctx], _Out]] = {
    "add_get": _add_get,
    "add_pick": _add_two_people,
    "sub_give": _sub_give,
    "sub_shop": _sub_diff,
    "mul_boxes": _mul_boxes,
    "mul_days": _mul_days,
    "add_sub": _add_sub,
    "sub_add": _sub_add,
    "add_add": _add_add,
    "sub_sub": _sub_sub,
    "mul_add": _mul_add,
    "mul_sub": _mul_sub,
}
TEMPLATE_NAMES: tuple[str, ...] = tuple(_TEMPLATES)


def split_of(key: str) -> Split:
    """Return the split a problem key belongs to (fixed, seed-independent)."""
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return "test" if h % _TEST_BUCKETS == 0 else "train"


def make_problem(rng: random.Random) -> Problem:
    """Draw one problem (of either split) from ``rng``."""
    tname = rng.choice(TEMPLATE_NAMES)
    name, pron = rng.choice(_PEOPLE)
    ctx = _Ctx(name, pron, rng.choice(_THINGS), rng.choice(_CONTAINERS))
    ops, question, lines, value = _TEMPLATES[tname](rng, ctx)
    key = tname + ":" + ",".join(map(str, ops))
    return Problem(question=question, answer=_fin(lines, value), value=value, key=key)


def iter_problems(split: Split, seed: int, *, unique: bool = False) -> Iterator[Problem]:
    """Yield an endless deterministic stream of problems of one split.

    Args:
        split: ``"train"`` or ``"test"``; the two never share a problem key.
        seed: stream seed; the split name is mixed in so equal seeds differ.
        unique: skip problems whose key was already yielded.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    rng = random.Random(f"{split}:{seed}")
    seen: set[str] = set()
    while True:
        p = make_problem(rng)
        if split_of(p.key) != split or (unique and p.key in seen):
            continue
        if unique:
            seen.add(p.key)
        yield p


def generate(split: Split, n: int, seed: int = 0, *, unique: bool = True) -> list[Problem]:
    """Return ``n`` problems of ``split`` (distinct keys unless ``unique=False``)."""
    it = iter_problems(split, seed, unique=unique)
    return [next(it) for _ in range(n)]


def write_jsonl(path: Path | str, problems: list[Problem]) -> Path:
    """Write problems as gsm8k JSONL (one ``{"question", "answer"}`` per line)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for p in problems:
            f.write(json.dumps(p.to_json(), ensure_ascii=False) + "\n")
    return path


def write_gsm8k_splits(
    out_dir: Path | str, n_test: int = 200, seed: int = 0, n_train: int = 1000
) -> dict[str, Path]:
    """Write ``train.jsonl`` (few-shot pool) and ``test.jsonl`` into ``out_dir``.

    The files have the gsm8k schema lm-eval's gsm8k task reads (``question``,
    ``answer`` ending in ``#### N``). Returns ``{"train": path, "test": path}``.
    """
    out = Path(out_dir)
    return {
        "train": write_jsonl(out / "train.jsonl", generate("train", n_train, seed)),
        "test": write_jsonl(out / "test.jsonl", generate("test", n_test, seed)),
    }


def calibration_records(n: int, seed: int = 0) -> list[dict[str, str | int]]:
    """Return ``n`` calibration rows (``id``, ``system_prompt``, ``question``, ``response``).

    Rows come from the train split, so calibration never sees test problems.
    """
    probs = generate("train", n, seed=seed + 1_000_003)
    return [
        {
            "id": f"synth-{seed}-{i}",
            "system_prompt": SYSTEM_PROMPT,
            "question": p.question,
            "response": p.answer,
        }
        for i, p in enumerate(probs)
    ]


def write_calibration_pickle(path: Path | str, n: int = 128, seed: int = 0) -> Path:
    """Write the calibration data set as calibrate_model.sh expects it.

    The file is a pickled pandas DataFrame (vllm-gaudi's step-1 reads it with
    ``pd.read_pickle`` and uses the ``system_prompt`` and ``question`` columns,
    like the MLCommons open-orca pickle).
    """
    import pandas as pd

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(calibration_records(n, seed)).to_pickle(path)
    return path
