"""Every malformed matrix of issue 16 (4 tracebacks, 18 silent acceptances, and their kin) is
refused at load with one line naming the file, the key and what to do."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.errors import MatrixError
from harness.matrix import load_matrix
from harness.metrics_catalog import STAGE_METRICS
from harness.metrics_catalog import gate_problem

ROOT = Path(__file__).resolve().parents[2]

GOOD = """
name: t
models:
  dense: {path: /m/dense, num_attention_heads: 8}
  moe: {path: /m/moe, moe: true, num_experts: 8}
axes:
  device: [cpu]
"""


def settings(stage: str, body: str) -> str:
    return GOOD + f"settings:\n  {stage}: {{{body}}}\n"


def gate(key: str, body: str) -> str:
    return GOOD + f"gates:\n  {key}: {{{body}}}\n"


BAD: list[tuple[str, str | bytes, str]] = [
    # -- were tracebacks
    ("include-tp-word", GOOD + "include:\n  - {model: dense, tp: two}\n", r"include\[0\]\.tp: .*valid integer.*'two'"),
    ("include-tp-zero", GOOD + "include:\n  - {model: dense, tp: 0}\n", r"include\[0\]\.tp: must be >= 1 \(got 0\)"),
    ("non-utf8", GOOD.encode() + b"description: caf\xe9\n", r"not UTF-8 text \(byte 0xe9 on line 8\); save the file as UTF-8"),
    ("collectives-size-invalid", settings("collectives", "sizes: [32q]"), r"settings\.collectives\.sizes\[0\]: .*message size '32q'"),
    # -- were silently accepted
    ("include-tp-negative", GOOD + "include:\n  - {model: dense, tp: -2}\n", r"include\[0\]\.tp: must be >= 1 \(got -2\)"),
    ("gate-unknown-metric", gate("accuracy.exact_match", "min: 0.5"), r"gates\.accuracy\.exact_match: the accuracy stage .*records no metric 'exact_match'.*Did you mean: exact_match_strict"),
    ("gate-min-above-max", gate("throughput.output_throughput", "min: 10, max: 5"), r"gates\.throughput\.output_throughput: min \(10\) is above max \(5\)"),
    ("accuracy-limit-zero", settings("accuracy", "limit: 0"), r"settings\.accuracy\.limit: must be >= 1 \(got 0\)"),
    ("accuracy-limit-negative", settings("accuracy", "limit: -3"), r"settings\.accuracy\.limit: must be >= 1 \(got -3\)"),
    ("concurrencies-not-positive", settings("throughput", "concurrencies: [0, -4]"), r"settings\.throughput\.concurrencies\[0\]: .*must be >= 1 \(got 0\)"),
    ("concurrencies-empty", settings("throughput", "concurrencies: []"), r"settings\.throughput\.concurrencies: must not be empty"),
    ("max-model-len-negative", settings("serving", "max_model_len: -512"), r"settings\.serving\.max_model_len: must be >= 1"),
    ("ready-timeout-negative", settings("serving", "ready_timeout_s: -1"), r"settings\.serving\.ready_timeout_s: must be > 0"),
    ("calibration-samples-negative", settings("calibration", "samples: -64"), r"settings\.calibration\.samples: must be >= 1"),
    ("calibration-batch-size-zero", settings("calibration", "batch_size: 0"), r"settings\.calibration\.batch_size: must be >= 1"),
    ("accuracy-batch-size-negative", settings("accuracy", "batch_size: -16"), r"settings\.accuracy\.batch_size: must be >= 1"),
    ("num-fewshot-negative", settings("accuracy", "num_fewshot: -1"), r"settings\.accuracy\.num_fewshot: must be >= 0"),
    ("max-gen-toks-zero", settings("accuracy", "max_gen_toks: 0"), r"settings\.accuracy\.max_gen_toks: must be >= 1"),
    ("duplicate-model-key", "name: t\nmodels:\n  a: {path: /a}\n  a: {path: /b}\n", r"models\.a: given twice \(lines 3 and 4\)"),
    ("exclude-unknown-model", GOOD + "exclude:\n  - {model: dens}\n", r"exclude\[0\]\.model: unknown model 'dens'\. Did you mean: dense\?"),
    ("exclude-wrong-type", GOOD + "exclude:\n  - {tp: [1, 2]}\n", r"exclude\[0\]\.tp: .*valid integer.*single axis values"),
    ("override-matches-no-cell", GOOD + "overrides:\n  - cells: 'lama/*'\n    settings: {accuracy: {limit: -1}}\n", r"overrides\[0\]\.cells: 'lama/\*' matches no cell .*dense/cpu/tp1/bf16-kv-auto"),
    ("stages-empty", GOOD + "stages: []\n", r"stages: must not be empty"),
    ("model-without-source", "name: t\nmodels: {m: {num_attention_heads: 8}}\n", r"models\.m: neither path nor hub_id is set"),
    # -- their kin: every range, list and reference the loader now checks
    ("duplicate-top-key", GOOD + "name: u\n", r"name: given twice"),
    ("duplicate-nested-key", GOOD + "settings:\n  serving: {port: 1, port: 2}\n", r"settings\.serving\.port: given twice"),
    ("include-unknown-model", GOOD + "include:\n  - {model: dens}\n", r"include\[0\]\.model: unknown model 'dens'"),
    ("include-unknown-device", GOOD + "include:\n  - {model: dense, device: g4}\n", r"include\[0\]\.device: .*'g2', 'g3' or 'cpu'"),
    ("exclude-unknown-kv-dtype", GOOD + "exclude:\n  - {kv_cache_dtype: fp9}\n", r"exclude\[0\]\.kv_cache_dtype: unknown kv_cache_dtype 'fp9'"),
    ("exclude-quantization-typo", GOOD + "exclude:\n  - {quantization: fp16}\n", r"exclude\[0\]\.quantization: .*'bf16' or 'fp8'"),
    ("exclude-empty-rule", GOOD + "exclude:\n  - {}\n", r"exclude\[0\]: an empty rule"),
    ("rule-not-a-mapping", GOOD + "exclude:\n  - tp\n", r"exclude\[0\]: Input should be a valid dictionary \(got 'tp'\)"),
    ("axis-empty-list", GOOD + "  tp: []\n", r"axes\.tp: must not be empty"),
    ("stage-listed-twice", GOOD + "stages: [serving, serving]\n", r"stages\[1\]: serving is listed twice"),
    ("gate-on-unselected-stage", GOOD + "stages: [serving]\ngates:\n  accuracy.exact_match_strict: {min: 0.5}\n", r"gates\.accuracy\.exact_match_strict: the matrix's stages \(serving\) do not include accuracy"),
    ("gate-other-backend-metric", gate("collectives.nw_bandwidth_gbps", "min: 1"), r"cpu backend records no metric 'nw_bandwidth_gbps'.*Known: algbw_gbps, busbw_gbps"),
    ("gate-bad-concurrency-suffix", gate("throughput.output_throughput@32", "min: 1"), r"'@32' is not a concurrency such as c32"),
    ("gate-suffix-on-unsuffixed-stage", gate("accuracy.exact_match_strict@c1", "min: 1"), r"accuracy records no per-size or per-concurrency metric"),
    ("gate-text-metric", gate("serving.smoke_reply", "min: 1"), r"serving stage .*records no metric 'smoke_reply'"),
    ("gate-empty-metric", gate("accuracy.", "min: 1"), r"gate keys are '<stage>\.<metric>'"),
    ("gate-negative-tolerance", gate("accuracy.exact_match_strict", "expected: 0.5, tolerance: -0.1"), r"\.tolerance: -0\.1 is negative"),
    ("gate-negative-drop", gate("accuracy.exact_match_strict", "max_drop_vs_bf16: -0.1"), r"\.max_drop_vs_bf16: -0\.1 is negative"),
    ("gate-expected-above-max", gate("throughput.p99_ttft_ms", "expected: 100, tolerance: 10, max: 50"), r"expected - tolerance \(90\) is above max \(50\)"),
    ("override-gate-min-above-matrix-max", GOOD + "gates:\n  throughput.p99_ttft_ms: {max: 5}\noverrides:\n  - cells: '*'\n    gates: {throughput.p99_ttft_ms: {min: 10}}\n", r"overrides\[0\]\.gates\.throughput\.p99_ttft_ms: min \(10\) is above max \(5\)"),
    ("override-unknown-metric", GOOD + "overrides:\n  - cells: '*'\n    gates: {accuracy.em: {min: 0.1}}\n", r"overrides\[0\]\.gates\.accuracy\.em: .*records no metric 'em'"),
    ("size-range-reversed", settings("collectives", "size_range: [64m, 1m]"), r"size_range 64m\.\.1m: the minimum is larger than the maximum"),
    ("size-range-invalid", settings("collectives", "size_range: [1m, lots]"), r"settings\.collectives\.size_range\[1\]: .*'lots'"),
    ("collectives-sizes-empty", settings("collectives", "sizes: []"), r"settings\.collectives\.sizes: must not be empty"),
    ("collectives-test-unknown", settings("collectives", "test: allreduce"), r"settings\.collectives\.test: .*'all_reduce'"),
    ("collectives-loop-zero", settings("collectives", "loop: 0"), r"settings\.collectives\.loop: must be >= 1"),
    ("collectives-timeout-zero", settings("collectives", "timeout_s: 0"), r"settings\.collectives\.timeout_s: must be > 0"),
    ("collectives-port-too-big", settings("collectives", "comm_port: 70000"), r"settings\.collectives\.comm_port: must be <= 65535"),
    ("required-env-not-a-name", settings("preflight", "required_env: ['HF TOKEN']"), r"settings\.preflight\.required_env\[0\]: .*not an environment variable name"),
    ("ray-timeout-negative", settings("preflight", "ray_timeout_s: -5"), r"settings\.preflight\.ray_timeout_s: must be > 0"),
    ("calibration-tp-zero", settings("calibration", "calibrate_tp: 0"), r"settings\.calibration\.calibrate_tp: must be >= 1"),
    ("calibration-timeout-zero", settings("calibration", "timeout_s: 0"), r"settings\.calibration\.timeout_s: must be > 0"),
    ("max-num-seqs-zero", settings("serving", "max_num_seqs: 0"), r"settings\.serving\.max_num_seqs: must be >= 1"),
    ("gpu-memory-above-one", settings("serving", "gpu_memory_utilization: 1.5"), r"settings\.serving\.gpu_memory_utilization: must be <= 1"),
    ("serving-port-zero", settings("serving", "port: 0"), r"settings\.serving\.port: must be >= 1"),
    ("accuracy-timeout-negative", settings("accuracy", "timeout_s: -1"), r"settings\.accuracy\.timeout_s: must be > 0"),
    ("input-len-zero", settings("throughput", "input_len: 0"), r"settings\.throughput\.input_len: must be >= 1"),
    ("num-prompts-negative", settings("throughput", "num_prompts: -4"), r"settings\.throughput\.num_prompts: must be >= 1"),
    ("goodput-unknown-slo", settings("throughput", "goodput: {ttfb: 100}"), r"settings\.throughput\.goodput\.ttfb"),
    ("goodput-negative", settings("throughput", "goodput: {ttft: -100}"), r"settings\.throughput\.goodput\.ttft: must be > 0"),
    ("concurrency-repeated", settings("throughput", "concurrencies: [1, 1]"), r"settings\.throughput\.concurrencies: .*1 is listed twice"),
    ("override-setting-out-of-range", GOOD + "overrides:\n  - cells: 'moe/*'\n    settings: {serving: {max_model_len: 0}}\n", r"overrides\[0\]\.settings\.serving\.max_model_len: must be >= 1"),
]


def write(tmp_path: Path, content: str | bytes, name: str = "m.yaml") -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(textwrap.dedent(content), encoding="utf-8")
    return path


@pytest.mark.parametrize(("content", "expected"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_matrix_is_refused_with_one_line_naming_file_and_key(tmp_path, content, expected):
    path = write(tmp_path, content)
    with pytest.raises(MatrixError, match=expected) as info:
        load_matrix(path)
    message = str(info.value)
    assert message.startswith(str(path.resolve()) + ": ") or message.startswith(f"{path}: ")
    assert "\n" not in message and "Traceback" not in message


def test_the_issue_cases_and_their_kin_are_all_covered():
    assert len({b[0] for b in BAD}) == len(BAD) >= 60


def test_a_rule_value_given_as_text_matches_like_the_axis_value(tmp_path):
    m = load_matrix(write(tmp_path, GOOD + "  tp: [1, 2]\nexclude:\n  - {tp: '2'}\n"))
    assert {c.tp for c in m.cells} == {1}


def test_every_gate_of_the_shipped_matrices_names_a_recorded_metric():
    for name in ("smoke-cpu", "nightly-g2", "nightly-g3", "deepseek-r1-multinode"):
        m = load_matrix(name)
        for cell in m.cells:
            for key in cell.gates:
                stage, _, metric = key.partition(".")
                assert gate_problem(stage, metric, m.backend) is None, (name, key)


def test_catalog_names_what_the_parsers_produce():
    from harness.backends.cpu.collectives import CpuCollectives
    from harness.backends.gaudi.collectives import GaudiCollectives
    from harness.serving.bench import COUNTS
    from harness.serving.bench import OPTIONAL
    from harness.serving.bench import metric_keys

    assert set(metric_keys()) | set(OPTIONAL) | set(COUNTS) == set(STAGE_METRICS["throughput"])
    for backend in (CpuCollectives, GaudiCollectives):
        assert set(backend.collectives_metric_names) <= set(STAGE_METRICS["collectives"])


def test_validate_prints_one_line_and_no_traceback(tmp_path):
    path = write(tmp_path, GOOD + "include:\n  - {model: dense, tp: two}\n")
    done = subprocess.run(
        [sys.executable, "-m", "harness.cli", "validate", "--matrix", str(path)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"harness validate: {path.resolve()}: include[0].tp: Input should be a valid integer, "
        "unable to parse string as an integer (got 'two'); a rule's values are single axis "
        "values, typed like the axis"
    ]


def test_pytest_matrix_option_prints_one_line_and_no_traceback(tmp_path):
    path = write(tmp_path, "name: t\nmodels: {m: {path: /m}}\nstages: []\n")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "suites", "--matrix", str(path), "--plan", "-q",
         "-p", "no:cacheprovider"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert done.returncode == 4  # pytest's usage error
    out = (done.stdout + done.stderr).strip()
    assert out.splitlines() == [
        f"ERROR: {path.resolve()}: stages: must not be empty: give at least one value "
        "(or leave the key out)"
    ]


def test_a_user_written_stage_test_declares_its_metrics_so_gates_may_name_them(tmp_path,
                                                                               monkeypatch):
    from harness import metrics_catalog

    path = write(tmp_path, gate("collectives.probe", "min: 0.5"))
    with pytest.raises(MatrixError, match=r"records no metric 'probe'"):
        load_matrix(path)
    monkeypatch.setitem(metrics_catalog.STAGE_METRICS, "collectives",
                        metrics_catalog.STAGE_METRICS["collectives"])
    metrics_catalog.declare("collectives", "probe")
    assert load_matrix(path).cells[0].gates["collectives.probe"].min == 0.5
