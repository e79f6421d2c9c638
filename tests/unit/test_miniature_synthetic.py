"""The synthetic GSM8K-format generator: determinism, correctness, disjoint splits, files."""

from __future__ import annotations

import json
import re

import pytest

from harness.miniature import synthetic
from harness.miniature.scoring import build_prompt
from harness.miniature.scoring import is_correct
from harness.miniature.scoring import strict_extract

_EQ = re.compile(r"(\d+) ([-+*]) (\d+) = (\d+)")


def test_same_seed_gives_the_same_problems() -> None:
    assert synthetic.generate("train", 50, seed=7) == synthetic.generate("train", 50, seed=7)


def test_other_seed_gives_other_problems() -> None:
    assert synthetic.generate("test", 20, seed=1) != synthetic.generate("test", 20, seed=2)


@pytest.mark.parametrize("split", ["train", "test"])
def test_every_worked_step_is_right_and_ends_in_the_value(split: synthetic.Split) -> None:
    for p in synthetic.generate(split, 500, seed=3):
        lines = p.answer.split("\n")
        assert lines[-1] == f"#### {p.value}"
        eqs = [_EQ.search(line) for line in lines[:-1]]
        assert eqs and all(eqs), p.answer
        for m in eqs:
            a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
            assert {"+": a + b, "-": a - b, "*": a * b}[op] == c, p.answer
        assert int(eqs[-1][4]) == p.value
        assert p.value >= 0
        assert len(eqs) in (1, 2)


def test_operands_stay_in_range_and_multiplication_is_small() -> None:
    for p in synthetic.generate("train", 500, seed=4):
        ops = [int(x) for x in p.key.split(":")[1].split(",")]
        assert all(0 <= x <= 50 for x in ops)
        if p.key.startswith("mul"):
            factors = sorted(ops[:2])
            assert 1 <= factors[0] <= 9 and factors[1] <= 12


def test_all_templates_are_used() -> None:
    used = {p.key.split(":")[0] for p in synthetic.generate("train", 400, seed=5)}
    assert used == set(synthetic.TEMPLATE_NAMES)


def test_test_split_is_disjoint_from_train_whatever_the_seeds() -> None:
    train = synthetic.generate("train", 3000, seed=0, unique=False)
    test = synthetic.generate("test", 300, seed=0)
    assert not {p.key for p in train} & {p.key for p in test}
    assert not {p.question for p in train} & {p.question for p in test}
    assert all(synthetic.split_of(p.key) == "test" for p in test)


def test_a_unique_split_has_distinct_problems() -> None:
    test = synthetic.generate("test", 500, seed=9)
    assert len({p.key for p in test}) == 500


def test_unknown_split_is_refused() -> None:
    with pytest.raises(ValueError, match="split must be"):
        next(synthetic.iter_problems("dev", 0))  # type: ignore[arg-type]


def test_gsm8k_splits_are_jsonl_with_the_gsm8k_fields(tmp_path) -> None:
    paths = synthetic.write_gsm8k_splits(tmp_path, n_test=30, seed=1, n_train=40)
    rows = {k: [json.loads(x) for x in v.read_text().splitlines()] for k, v in paths.items()}
    assert len(rows["test"]) == 30 and len(rows["train"]) == 40
    for r in rows["train"] + rows["test"]:
        assert set(r) == {"question", "answer"}
        assert re.search(r"\n#### \d+$", r["answer"])
    assert not {r["question"] for r in rows["train"]} & {r["question"] for r in rows["test"]}
    again = synthetic.write_gsm8k_splits(tmp_path / "b", n_test=30, seed=1, n_train=40)
    assert again["test"].read_bytes() == paths["test"].read_bytes()


def test_calibration_pickle_is_a_dataframe_with_the_documented_fields(tmp_path) -> None:
    pd = pytest.importorskip("pandas")
    path = synthetic.write_calibration_pickle(tmp_path / "calib.pkl", n=16, seed=2)
    df = pd.read_pickle(path)
    assert isinstance(df, pd.DataFrame)
    assert {"system_prompt", "question"} <= set(df.columns)
    assert len(df) == 16
    assert df["question"].map(len).min() > 20
    # vllm-gaudi step-1 does this with the pickle:
    sample = df.sample(frac=1, random_state=42).head(8)
    assert all(isinstance(r["question"], str) for _, r in sample.iterrows())
    test_q = {p.question for p in synthetic.generate("test", 300, seed=0)}
    assert not set(df["question"]) & test_q


def test_prompt_matches_lm_eval_gsm8k_format() -> None:
    a, b = synthetic.generate("train", 2, seed=0)
    prompt = build_prompt("Q?", [a, b])
    assert prompt == (
        f"Question: {a.question}\nAnswer: {a.answer}\n\n"
        f"Question: {b.question}\nAnswer: {b.answer}\n\nQuestion: Q?\nAnswer:"
    )


@pytest.mark.parametrize(
    ("continuation", "ok"),
    [
        (" 3 + 4 = 7 cups.\n#### 7\n\nQuestion: more", True),
        (" #### 7.", True),
        (" #### 8\n#### 7", False),
        (" the answer is 7", False),
        (" x\n\nQuestion: y\n#### 7", False),
    ],
    ids=["worked", "trailing-dot", "first-match-wins", "no-marker", "after-stop"],
)
def test_strict_match_scores_like_lm_eval(continuation: str, ok: bool) -> None:
    assert is_correct(continuation, "3 + 4 = 7\n#### 7") is ok


def test_strict_extract_reports_invalid() -> None:
    assert strict_extract("no answer") == "[invalid]"
