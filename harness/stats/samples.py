"""Per-problem correctness from lm-eval's `--log_samples` files, for the paired FP8-vs-BF16 test.

lm-eval writes `<output>/<model>/samples_<task>_<time>.jsonl`: one JSON object per (problem,
filter) with `doc_id`, `filter` (gsm8k: `strict-match`, `flexible-extract`), the metric names in
`metrics` and each metric's value (`exact_match`: 0.0 or 1.0) as a top-level key. `doc_hash`
(when present) says which problem it was, so two runs are only paired when they asked the same.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError

STRICT = "strict-match"
METRIC = "exact_match"


class SamplesError(HarnessError):
    """An lm-eval samples file is missing, corrupt, or cannot be paired; names the file."""


@dataclass(frozen=True, slots=True)
class Samples:
    """Correctness per problem (doc_id -> solved) of one cell, with the file it came from."""

    correct: Mapping[int, bool]
    source: str
    hashes: Mapping[int, str]

    @property
    def n(self) -> int:
        return len(self.correct)

    @property
    def k(self) -> int:
        return sum(self.correct.values())


def find_samples_file(output_dir: Path, task: str | None = None) -> Path:
    """The newest `samples_<task>_*.jsonl` under an lm-eval output directory."""
    pattern = f"samples_{task}_*.jsonl" if task else "samples_*.jsonl"
    files = sorted(output_dir.rglob(pattern), key=lambda p: (p.stat().st_mtime, p.name))
    if not files:
        raise SamplesError(
            f"{output_dir}: no {pattern} (run lm-eval with --log_samples; the accuracy stage does)"
        )
    return files[-1]


def load_samples(path: Path, filter_name: str = STRICT, metric: str = METRIC) -> Samples:
    """Read one filter's per-problem metric; a line that is not JSON is an error naming it."""
    correct: dict[int, bool] = {}
    hashes: dict[int, str] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise SamplesError(f"{path}: unreadable lm-eval samples file ({exc.strerror})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if row.get("filter", filter_name) != filter_name:
                continue
            doc_id = int(row["doc_id"])
            value = float(row[metric])
        except (json.JSONDecodeError, AttributeError) as exc:
            raise SamplesError(
                f"{path}:{number}: not an lm-eval sample line ({exc}); re-run the accuracy stage"
            ) from None
        except (KeyError, TypeError, ValueError) as exc:
            raise SamplesError(
                f"{path}:{number}: no usable doc_id/{metric} ({exc!r}); was it written by "
                "lm-eval --log_samples?"
            ) from None
        correct[doc_id] = value >= 0.5
        if isinstance(row.get("doc_hash"), str):
            hashes[doc_id] = row["doc_hash"]
    if not correct:
        raise SamplesError(f"{path}: no {filter_name!r} samples with {metric!r}")
    return Samples(correct, str(path), hashes)


@dataclass(frozen=True, slots=True)
class PairedCounts:
    """The 2x2 table of FP8 (rows) against BF16 (columns) over the problems both answered."""

    both: int  # both solved
    fp8_only: int  # FP8 solved, BF16 did not
    bf16_only: int  # BF16 solved, FP8 did not
    neither: int

    @property
    def n(self) -> int:
        return self.both + self.fp8_only + self.bf16_only + self.neither

    @property
    def discordant(self) -> int:
        return self.fp8_only + self.bf16_only

    @property
    def fp8_rate(self) -> float:
        return (self.both + self.fp8_only) / self.n

    @property
    def bf16_rate(self) -> float:
        return (self.both + self.bf16_only) / self.n


def pair(fp8: Samples, bf16: Samples) -> PairedCounts:
    """Pair by doc_id; both cells must have asked the same problems (same ids, same hashes)."""
    if set(fp8.correct) != set(bf16.correct):
        only_fp8 = len(set(fp8.correct) - set(bf16.correct))
        only_bf16 = len(set(bf16.correct) - set(fp8.correct))
        raise SamplesError(
            f"{fp8.source} and {bf16.source} did not ask the same problems ({only_fp8} only in "
            f"the first, {only_bf16} only in the second): run both cells with the same task, "
            "dataset and limit"
        )
    differ = [d for d in fp8.hashes if d in bf16.hashes and fp8.hashes[d] != bf16.hashes[d]]
    if differ:
        raise SamplesError(
            f"{fp8.source} and {bf16.source}: problem {differ[0]} differs between the files "
            f"({len(differ)} problems differ): the datasets are not the same"
        )
    counts = {(True, True): 0, (True, False): 0, (False, True): 0, (False, False): 0}
    for doc_id, solved in fp8.correct.items():
        counts[(solved, bf16.correct[doc_id])] += 1
    return PairedCounts(
        both=counts[(True, True)],
        fp8_only=counts[(True, False)],
        bf16_only=counts[(False, True)],
        neither=counts[(False, False)],
    )
