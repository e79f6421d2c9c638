"""lm-eval pieces the accuracy stage needs: a local gsm8k-format task and the results parser.

A local task (the project's synthetic problems on the cpu backend, or a copy of gsm8k on an
air-gapped cluster) is a task YAML that `include`s lm-eval's own gsm8k (or gsm8k_cot_llama)
task and only swaps the dataset for local JSON/Parquet files, so prompts, few-shot format,
filters and metrics stay exactly lm-eval's. It is written next to the run's artifacts and
passed with `--include_path`.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harness.errors import HarnessError
from harness.serving.commands import AccuracyTask
from harness.settings import AccuracySettings

# lm-eval task name -> its YAML inside lm_eval/tasks/gsm8k/
BASE_TASK_FILES = {"gsm8k": "gsm8k.yaml", "gsm8k_cot_llama": "gsm8k-cot-llama.yaml"}
STRICT = "exact_match,strict-match"
FLEXIBLE = "exact_match,flexible-extract"
DATA_SUFFIXES = (".jsonl", ".json", ".parquet")


class LmEvalError(HarnessError):
    """lm-eval input or output is not what the accuracy stage needs; says which file."""


def lm_eval_tasks_dir() -> Path:
    """lm_eval/tasks in the installed package, found without importing lm_eval."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise LmEvalError(
            "lm-eval is not installed: pip install 'lm-eval[api]' (the cpu extra has it)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "tasks"


def base_task_yaml(task: str, tasks_dir: Path | None = None) -> Path:
    if task not in BASE_TASK_FILES:
        raise LmEvalError(
            f"accuracy.task {task!r} has no local-dataset form; use one of "
            f"{', '.join(BASE_TASK_FILES)} (or drop accuracy.dataset_path to use the hub)"
        )
    return (tasks_dir or lm_eval_tasks_dir()) / "gsm8k" / BASE_TASK_FILES[task]


def find_splits(dataset_dir: Path) -> dict[str, Path]:
    """train/test files of a local gsm8k copy: `<dir>/{train,test}.jsonl` or the hub layout
    `<dir>/main/{train,test}-*.parquet`."""
    for where in (dataset_dir, dataset_dir / "main"):
        if not where.is_dir():
            continue
        found: dict[str, Path] = {}
        for split in ("train", "test"):
            files = sorted(
                p for p in where.iterdir()
                if p.name.startswith(split) and p.suffix in DATA_SUFFIXES
            )
            if files:
                found[split] = files[0]
        if len(found) == 2:
            return found
    raise LmEvalError(
        f"{dataset_dir}: no gsm8k train and test files (expected train.jsonl/test.jsonl, or "
        "main/train-*.parquet and main/test-*.parquet as on the hub)"
    )


def write_local_task(
    out_dir: Path, name: str, base_task: str, splits: dict[str, Path],
    tasks_dir: Path | None = None,
) -> Path:
    """Write `<out_dir>/<name>.yaml`: lm-eval's `base_task` on local files."""
    fmt = "parquet" if splits["test"].suffix == ".parquet" else "json"
    doc: dict[str, Any] = {
        "include": str(base_task_yaml(base_task, tasks_dir)),
        "task": name,
        "tag": [],
        "dataset_path": fmt,
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {k: str(v.resolve()) for k, v in splits.items()}},
        "training_split": "train",
        "fewshot_split": "train",
        "test_split": "test",
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


SYNTHETIC_SEED = 0


def resolve_task(
    settings: AccuracySettings, workdir: Path, default_dataset: str, write: bool = True
) -> AccuracyTask:
    """The task a cell runs: a local copy when `dataset_path` is set, else `dataset` or the
    backend's default (`hub`: lm-eval's own task by hub id; `synthetic`: the project's
    gsm8k-format problems). Local tasks are written under `<workdir>/task` when `write`."""
    task_dir = workdir / "task"
    if settings.dataset_path:
        name = f"{settings.task}_local"
        if write:
            splits = find_splits(Path(settings.dataset_path))
            write_local_task(task_dir, name, settings.task, splits)
        return AccuracyTask(name, task_dir, "local", settings.dataset_path)
    source = settings.dataset or default_dataset
    if source == "hub":
        return AccuracyTask(settings.task, None, "hub", "lm-eval's dataset_path (HF hub)")
    name = f"{settings.task}_synthetic"
    if write:
        from harness.miniature.synthetic import write_gsm8k_splits

        n_test = max(settings.synthetic_samples, settings.limit or 0)
        splits = write_gsm8k_splits(task_dir / "data", n_test=n_test, seed=SYNTHETIC_SEED)
        write_local_task(task_dir, name, settings.task, splits)
    return AccuracyTask(name, task_dir, "synthetic", "harness.miniature.synthetic")


@dataclass(frozen=True)
class AccuracyResult:
    """One task's figures from an lm-eval results file."""

    task: str
    strict: float
    flexible: float
    samples: int
    strict_stderr: float | None
    flexible_stderr: float | None
    path: Path

    def metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "exact_match_strict": round(self.strict, 4),
            "exact_match_flexible": round(self.flexible, 4),
            "samples": self.samples,
        }
        if self.strict_stderr is not None:
            out["exact_match_strict_stderr"] = round(self.strict_stderr, 4)
        if self.flexible_stderr is not None:
            out["exact_match_flexible_stderr"] = round(self.flexible_stderr, 4)
        return out


def latest_results_file(output_path: Path) -> Path:
    files = sorted(output_path.rglob("results_*.json"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise LmEvalError(
            f"{output_path}: lm-eval wrote no results_*.json (see the lm-eval log next to it)"
        )
    return files[-1]


def parse_results(path: Path, task: str | None = None) -> AccuracyResult:
    """strict/flexible exact match and the sample count of `task` (or the only task)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise LmEvalError(f"{path}: unreadable lm-eval results ({exc})") from None
    results = data.get("results") or {}
    if task is None:
        if len(results) != 1:
            raise LmEvalError(f"{path}: expected one task, found {sorted(results) or 'none'}")
        task = next(iter(results))
    if task not in results:
        raise LmEvalError(f"{path}: no results for task {task!r} (has {sorted(results)})")
    row = results[task]
    missing = [k for k in (STRICT, FLEXIBLE) if k not in row]
    if missing:
        raise LmEvalError(
            f"{path}: task {task!r} has no {', '.join(missing)} (a gsm8k-format task has both "
            "filters)"
        )
    n = (data.get("n-samples") or {}).get(task, {})
    samples = int(n.get("effective", n.get("original", 0)) or 0)
    return AccuracyResult(
        task=task,
        strict=float(row[STRICT]),
        flexible=float(row[FLEXIBLE]),
        samples=samples,
        strict_stderr=_maybe_float(row.get("exact_match_stderr,strict-match")),
        flexible_stderr=_maybe_float(row.get("exact_match_stderr,flexible-extract")),
        path=path,
    )


def _maybe_float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
