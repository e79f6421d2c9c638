"""What the malformed-matrix corpus (tests/data/matrices/bad/, test_matrix_corpus.py) does not
cover: a rule value typed as text, the gates of the shipped matrices, the metric catalog, and
`harness validate` printing one line."""

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


def write(tmp_path: Path, content: str | bytes, name: str = "m.yaml") -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(textwrap.dedent(content), encoding="utf-8")
    return path


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


def test_a_user_written_stage_test_declares_its_metrics_so_gates_may_name_them(tmp_path,
                                                                               monkeypatch):
    from harness import metrics_catalog

    path = write(tmp_path, GOOD + "gates:\n  collectives.probe: {min: 0.5}\n")
    with pytest.raises(MatrixError, match=r"records no metric 'probe'"):
        load_matrix(path)
    monkeypatch.setitem(metrics_catalog.STAGE_METRICS, "collectives",
                        metrics_catalog.STAGE_METRICS["collectives"])
    metrics_catalog.declare("collectives", "probe")
    assert load_matrix(path).cells[0].gates["collectives.probe"].min == 0.5
