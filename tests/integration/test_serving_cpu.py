"""The serving, accuracy and throughput stages for real on vLLM's CPU build, with the faults.

One `pytest suites` run over four cells of a small random Llama (built here; no training):

1. `busy-port`: serving.port is held by this test -> the serving stage fails at once, no
   server is started;
2. `never-ready`: ready_timeout_s 3 s (vLLM needs 40+ s) -> fails at the timeout, its whole
   process group is stopped;
3. `killed`: serves, then a plugin SIGKILLs the server's group as soon as the benchmark's
   first request streams -> the throughput stage fails at once, naming the dead server;
4. `healthy`: serving, lm-eval accuracy and the benchmark pass: the next cell still runs.

Two real vLLM servers in all (~3-5 minutes on two cores); no process may be left behind.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]

KILLER = r'''
"""pytest plugin: SIGKILL the `killed` cell's server group when the benchmark's first request
reaches it (its access line appears in the server log)."""
import os, signal, threading, time
from pathlib import Path
import pytest

@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item):
    if not (item.name.startswith("test_throughput") and "[killed/" in item.name):
        return
    server = item.funcargs["server"]
    log, start = server.log_path, server.log_path.stat().st_size
    pgid = server.server.process.pgid

    def watch():
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            with log.open("rb") as fh:
                fh.seek(start)
                if b"POST /v1/completions" in fh.read():
                    os.killpg(pgid, signal.SIGKILL)
                    Path(os.environ["KILL_MARK"]).write_text(str(pgid))
                    return
            time.sleep(0.1)

    threading.Thread(target=watch, daemon=True).start()
'''


def _build_model(out: Path) -> Path:
    code = (
        "import sys, torch; from pathlib import Path;"
        "from transformers import AutoTokenizer;"
        "from harness.miniature.tokenizer import train_tokenizer;"
        "from harness.miniature.build import build_model;"
        "out = Path(sys.argv[1]); train_tokenizer(out, n_texts=2000);"
        "tok = AutoTokenizer.from_pretrained(out);"
        "m = build_model('tiny-llama', len(tok), tok.eos_token_id, tok.pad_token_id);"
        "m.to(torch.bfloat16).save_pretrained(out)"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    subprocess.run([sys.executable, "-c", code, str(out)], check=True, env=env, timeout=300,
                   capture_output=True)
    return out


def _matrix(path: Path, model: Path, busy_port: int) -> Path:
    models = "".join(
        f"  {name}:\n    path: {model}\n    num_attention_heads: 4\n"
        for name in ("busy-port", "never-ready", "killed", "healthy")
    )
    path.write_text(
        "name: serving-faults\nbackend: cpu\nmodels:\n" + models
        + "axes: {device: [cpu], tp: [1], quantization: [bf16], kv_cache_dtype: [auto]}\n"
        "stages: [serving, accuracy, throughput]\n"
        "settings:\n"
        "  serving: {max_model_len: 512, max_num_seqs: 8, ready_timeout_s: 600}\n"
        "  accuracy: {limit: 4, num_fewshot: 1, batch_size: 4, max_gen_toks: 16,"
        " synthetic_samples: 4}\n"
        "  throughput: {concurrencies: [1], input_len: 32, output_len: 16, num_prompts: 4}\n"
        "gates:\n  throughput.output_throughput: {min: 0.1}\n"
        "overrides:\n"
        f"  - cells: 'busy-port/*'\n    settings: {{serving: {{port: {busy_port}}}}}\n"
        "  - cells: 'never-ready/*'\n    settings: {serving: {ready_timeout_s: 3}}\n"
        "  - cells: 'killed/*'\n    settings: {throughput: {num_prompts: 200, output_len: 64}}\n",
        encoding="utf-8",
    )
    return path


def _leftovers(marker: str) -> list[str]:
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if marker in cmdline and "pytest" not in cmdline:
            found.append(f"{proc.info['pid']}: {cmdline[:120]}")
    return found


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One suites run over the four cells; returns its results by (cell model, stage)."""
    tmp = tmp_path_factory.mktemp("serving_cpu")
    model = _build_model(tmp / "rand-llama")
    (tmp / "plugins").mkdir()
    (tmp / "plugins" / "serving_killer.py").write_text(KILLER, encoding="utf-8")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        matrix = _matrix(tmp / "faults.yaml", model, holder.getsockname()[1])
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(tmp / "plugins"), str(REPO)]),
            "KILL_MARK": str(tmp / "killed.mark"),
        }
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "suites", "--matrix", str(matrix),
             "--results-dir", str(tmp / "reports"), "-q", "-p", "serving_killer",
             "-p", "no:cacheprovider", "-k", "not (test_accuracy and killed)"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=1500,
        )
    (results,) = (tmp / "reports").glob("*/results.jsonl")
    records = [json.loads(line) for line in results.read_text().splitlines()]
    by = {(r["cell"].split("/")[0], r["stage"]): r for r in records if "stage" in r}
    return {"proc": proc, "by": by, "tmp": tmp, "model": model, "run_dir": results.parent}


def test_a_port_already_in_use_fails_the_cell_at_once_and_skips_its_later_stages(run):
    serving = run["by"][("busy-port", "serving")]
    assert serving["status"] == "failed", run["proc"].stdout[-3000:]
    assert "is already in use; the server was not started" in serving["message"]
    assert serving["duration_s"] < 30
    for stage in ("accuracy", "throughput"):
        later = run["by"][("busy-port", stage)]
        assert later["status"] == "skipped" and "earlier stage serving failed" in later["message"]


def test_a_server_that_never_becomes_ready_fails_at_its_timeout(run):
    serving = run["by"][("never-ready", "serving")]
    assert serving["status"] == "failed"
    assert "the server was not ready after 3 s" in serving["message"]
    assert "last lines of the server log" in serving["message"]
    assert serving["duration_s"] < 60


def test_a_server_killed_mid_benchmark_fails_the_throughput_stage_naming_the_server(run):
    assert (run["tmp"] / "killed.mark").is_file(), "the benchmark never reached the server"
    assert run["by"][("killed", "serving")]["status"] == "passed"
    throughput = run["by"][("killed", "throughput")]
    assert throughput["status"] == "failed"
    assert "the server process exited with status -9 (killed by a signal)" in (
        throughput["message"]
    )
    assert throughput["duration_s"] < 300  # not the benchmark's own timeout


def test_the_next_cell_still_serves_and_measures_accuracy_and_throughput(run):
    by = run["by"]
    for stage in ("serving", "accuracy", "throughput"):
        assert by[("healthy", stage)]["status"] == "passed", by[("healthy", stage)]["message"]
    serving = by[("healthy", "serving")]["metrics"]
    assert serving["ready_s"] > 0 and serving["smoke_tokens"] >= 1
    assert serving["emulated"] == "none" and serving["weights"] == "bf16"
    accuracy = by[("healthy", "accuracy")]["metrics"]
    assert accuracy["samples"] == 4 and accuracy["dataset"] == "synthetic"
    assert 0.0 <= accuracy["exact_match_strict"] <= 1.0
    assert 0.0 <= accuracy["exact_match_flexible"] <= 1.0
    throughput = by[("healthy", "throughput")]["metrics"]
    assert throughput["output_throughput@c1"] > 0
    for key in ("mean_ttft_ms@c1", "median_tpot_ms@c1", "p99_itl_ms@c1", "p99_e2el_ms@c1"):
        assert throughput[key] > 0
    gates = by[("healthy", "throughput")]["gates"]
    assert any(g["metric"] == "throughput.output_throughput@c1" and g["passed"] for g in gates)


def test_artifacts_keep_the_server_log_lm_eval_output_and_bench_json(run):
    artifacts = run["by"][("healthy", "accuracy")]["artifacts"]
    lm_eval_output = run["run_dir"] / artifacts["lm_eval_output"]
    assert list(lm_eval_output.rglob("results_*.json"))
    assert list(lm_eval_output.rglob("samples_*.jsonl"))
    bench = run["by"][("healthy", "throughput")]["artifacts"]["bench@c1"]
    assert json.loads((run["run_dir"] / bench).read_text())["max_concurrency"] == 1
    log = run["run_dir"] / run["by"][("healthy", "serving")]["artifacts"]["server_log"]
    assert "Application startup complete" in log.read_text()


def test_no_server_or_client_process_is_left(run):
    assert run["proc"].returncode == 1  # three cells failed on purpose
    assert _leftovers(str(run["model"])) == []
