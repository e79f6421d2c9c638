"""lm-eval pieces of the accuracy stage: local gsm8k-format task, results parsing, command."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from harness.serving.commands import AccuracyTask
from harness.serving.commands import lm_eval_command
from harness.serving.lmeval import LmEvalError
from harness.serving.lmeval import find_splits
from harness.serving.lmeval import latest_results_file
from harness.serving.lmeval import lm_eval_tasks_dir
from harness.serving.lmeval import parse_results
from harness.serving.lmeval import resolve_task
from harness.serving.lmeval import write_local_task
from harness.settings import AccuracySettings

DATA = Path(__file__).resolve().parents[1] / "data" / "vllm"


def test_a_real_lm_eval_results_file_gives_both_metrics_and_the_sample_count():
    result = parse_results(DATA / "lm_eval_results_gsm8k_synthetic.json")
    assert result.task == "gsm8k_synthetic"
    metrics = result.metrics()
    assert metrics["samples"] == 20
    assert metrics["exact_match_strict"] == 0.0 and metrics["exact_match_flexible"] == 0.0
    assert "exact_match_strict_stderr" in metrics


def test_results_of_another_task_are_refused_by_name():
    with pytest.raises(LmEvalError, match="no results for task 'gsm8k'"):
        parse_results(DATA / "lm_eval_results_gsm8k_synthetic.json", "gsm8k")


def test_the_newest_results_file_is_found_under_lm_eval_output(tmp_path):
    out = tmp_path / "lm_eval_output" / "tiny-llama"
    out.mkdir(parents=True)
    old = out / "results_2026-01-01T00-00-00.json"
    new = out / "results_2026-01-02T00-00-00.json"
    shutil.copy(DATA / "lm_eval_results_gsm8k_synthetic.json", old)
    shutil.copy(DATA / "lm_eval_results_gsm8k_synthetic.json", new)
    import os

    os.utime(old, (1, 1))
    assert latest_results_file(tmp_path / "lm_eval_output") == new
    with pytest.raises(LmEvalError, match="wrote no results"):
        latest_results_file(tmp_path / "empty")


def test_a_local_task_includes_lm_evals_gsm8k_and_only_swaps_the_dataset(tmp_path):
    splits = {"train": tmp_path / "train.jsonl", "test": tmp_path / "test.jsonl"}
    for path in splits.values():
        path.write_text(json.dumps({"question": "1+1?", "answer": "1+1=2\n#### 2"}) + "\n")
    path = write_local_task(tmp_path / "task", "gsm8k_local", "gsm8k", splits)
    doc = yaml.safe_load(path.read_text())
    assert doc["include"] == str(lm_eval_tasks_dir() / "gsm8k" / "gsm8k.yaml")
    assert Path(doc["include"]).is_file()
    assert doc["task"] == "gsm8k_local" and doc["dataset_path"] == "json"
    assert doc["dataset_name"] is None
    assert doc["dataset_kwargs"]["data_files"]["test"] == str(splits["test"].resolve())


def test_the_cot_llama_task_has_a_local_form_and_other_tasks_do_not(tmp_path):
    splits = {"train": tmp_path / "train.jsonl", "test": tmp_path / "test.jsonl"}
    path = write_local_task(tmp_path, "cot_local", "gsm8k_cot_llama", splits)
    assert yaml.safe_load(path.read_text())["include"].endswith("gsm8k-cot-llama.yaml")
    with pytest.raises(LmEvalError, match="accuracy.task 'mmlu' has no local-dataset form"):
        write_local_task(tmp_path, "x", "mmlu", splits)


def test_a_hub_layout_copy_of_gsm8k_is_found_for_air_gapped_clusters(tmp_path):
    main = tmp_path / "gsm8k" / "main"
    main.mkdir(parents=True)
    (main / "train-00000-of-00001.parquet").write_bytes(b"")
    (main / "test-00000-of-00001.parquet").write_bytes(b"")
    splits = find_splits(tmp_path / "gsm8k")
    assert splits["test"].name == "test-00000-of-00001.parquet"
    path = write_local_task(tmp_path / "task", "gsm8k_local", "gsm8k", splits)
    assert yaml.safe_load(path.read_text())["dataset_path"] == "parquet"
    with pytest.raises(LmEvalError, match="no gsm8k train and test files"):
        find_splits(tmp_path / "nothing")


def test_the_cpu_default_task_is_written_from_the_synthetic_problems(tmp_path):
    settings = AccuracySettings(limit=30, synthetic_samples=20)
    task = resolve_task(settings, tmp_path, "synthetic")
    assert task.name == "gsm8k_synthetic" and task.dataset == "synthetic"
    test_lines = (tmp_path / "task" / "data" / "test.jsonl").read_text().splitlines()
    assert len(test_lines) == 30  # at least --limit problems
    assert json.loads(test_lines[0])["answer"].splitlines()[-1].startswith("#### ")
    assert (tmp_path / "task" / "gsm8k_synthetic.yaml").is_file()


def test_the_gaudi_default_is_lm_evals_own_task_and_a_dataset_path_wins(tmp_path):
    assert resolve_task(AccuracySettings(), tmp_path, "hub") == AccuracyTask(
        "gsm8k", None, "hub", "lm-eval's dataset_path (HF hub)"
    )
    local = resolve_task(
        AccuracySettings(dataset_path="/data/gsm8k"), tmp_path, "hub", write=False
    )
    assert local.name == "gsm8k_local" and local.include_path == tmp_path / "task"


def test_the_lm_eval_command_follows_seed_003_and_adds_the_matrix_options(tmp_path):
    settings = AccuracySettings(
        limit=100, num_fewshot=3, batch_size=8, max_gen_toks=64, num_concurrent=4,
        gen_kwargs={"temperature": 0}, apply_chat_template=True, fewshot_as_multiturn=True,
    )
    task = AccuracyTask("gsm8k_synthetic", tmp_path / "task", "synthetic")
    cmd = lm_eval_command(
        task=task, served_name="tiny-llama", base_url="http://127.0.0.1:8000",
        max_length=1024, settings=settings, output_dir=tmp_path, env={"HF_HUB_OFFLINE": "1"},
    )
    argv = list(cmd.argv)
    assert argv[:5] == ["lm_eval", "--model", "local-completions", "--tasks", "gsm8k_synthetic"]
    assert argv[argv.index("--model_args") + 1] == (
        "model=tiny-llama,max_gen_toks=64,max_length=1024,"
        "base_url=http://127.0.0.1:8000/v1/completions,num_concurrent=4"
    )
    for flag, value in (("--batch_size", "8"), ("--num_fewshot", "3"), ("--limit", "100"),
                        ("--gen_kwargs", "temperature=0"),
                        ("--include_path", str(tmp_path / "task")),
                        ("--output_path", str(tmp_path / "lm_eval_output"))):
        assert argv[argv.index(flag) + 1] == value
    assert "--apply_chat_template" in argv and "--fewshot_as_multiturn" in argv
    assert "--log_samples" in argv
    assert cmd.env == {"HF_HUB_OFFLINE": "1"}
