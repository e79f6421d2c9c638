"""report.html: verdict, grid, gates with intervals and unknown status, failures with hint and
log tail, per-request distributions or "not recorded", offline, and robust to broken input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from harness.cli import main
from harness.report import facts
from harness.report import synthetic
from harness.report.html import render_html
from harness.report.html import write_html
from harness.report.qualification import Run
from harness.report.qualification import load_run
from harness.report.qualification import render
from harness.results import ResultStore
from harness.results import StageResult

CELLS = synthetic.cell_ids(4)
FAILED = CELLS[1]
RUN = "20261202-000000-000-0000"


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    return synthetic.write_run(tmp_path, RUN, CELLS, fail_serving=FAILED)


def _page(run_dir: Path) -> str:
    store = ResultStore(run_dir.parent)
    return write_html(load_run(store, run_dir.name), [], run_dir).read_text()


def test_verdict_matches_the_markdown_report_and_says_what_it_rests_on(run_dir):
    page = _page(run_dir)
    run = load_run(ResultStore(run_dir.parent), RUN)
    assert "**Verdict: NOT QUALIFIED**" in render(run)
    assert 'id="verdict">Verdict: NOT QUALIFIED' in page
    assert "20 stage(s): 19 passed, 1 failed, 0 skipped" in page
    assert "gates: 7 passed, 1 unknown" in page
    assert "an unknown gate is never a pass" in page


def test_the_grid_has_a_row_a_cell_with_status_key_figure_and_links(run_dir):
    page = _page(run_dir)
    grid = page[page.index('id="grid"'):page.index("</table>", page.index('id="grid"'))]
    assert grid.count("<tr>") == 1 + len(CELLS)
    assert 'class="failed"' in grid and "busbw_gbps=0.9" in grid
    # the failed server has no artifacts: the grid links the log found in its stage directory
    assert 'href="cells/model-0__cpu__tp1__fp8-kv-fp8/serving/server.log"' in grid
    assert f'href="#{"s-" + re.sub("[^0-9a-zA-Z]", "-", CELLS[0] + "-preflight")}"' in grid


def test_every_gate_shows_value_bound_interval_and_status(run_dir):
    page = _page(run_dir)
    assert re.search(r"accuracy\.exact_match_strict</td><td>0\.\d+</td><td>&gt;= 0\.6</td>"
                     r"<td>\[0\.\d+, 0\.\d+\]</td>", page)
    assert '<td class="unknown"><span title=' in page
    assert "no BF16 reference in the run or in history" in page
    assert "n=200" in page


def test_a_failed_server_shows_its_hint_and_the_last_lines_of_its_log(run_dir):
    page = _page(run_dir)
    failures = page[page.index('id="failures"'):]
    assert f"{FAILED} [serving]" in failures
    assert f"fix: {synthetic.FAILED_HINT}" in failures
    assert synthetic.FAILED_LOG in failures
    assert failures.count("INFO starting") == facts.LOG_LINES - 1


def test_distributions_when_per_request_data_exists_and_not_recorded_otherwise(run_dir):
    page = _page(run_dir)
    assert "TTFT @c1 (ms)" in page and "TPOT @c4 (ms)" in page
    assert "c=32: per-request TTFT/TPOT not recorded" in page
    assert "TTFT @c32" not in page


def test_fp8_beside_bf16_calibration_and_bandwidth_sections(run_dir):
    page = _page(run_dir)
    fp8 = page[page.index('id="fp8-table"'):]
    assert "output tok/s @c32" in fp8 and "0.90x" in fp8 and "vs bf16: unknown" in fp8
    assert "expert 3 never routed" in page
    assert "all_reduce bus bandwidth (GB/s) per message size" in page and "gate &gt;= 0.02" in page
    # an artifact recorded but gone is marked, not silently dropped
    assert re.search(r'quant_config</a> <span class="missing">missing</span>', page)


def test_the_page_is_offline_no_url_no_external_reference(run_dir):
    page = _page(run_dir)
    assert not re.search(r"(https?:)?//[a-z]", page.replace("file://", ""))
    assert not re.search(r"<(link|img|iframe)\b|src=", page)


def test_broken_artifacts_and_a_torn_results_file_still_render(run_dir):
    (run_dir / "cells" / "model-0__cpu__tp1__bf16-kv-auto" / "throughput" / "bench_c1.json"
     ).write_text("{not json")
    (run_dir / "cells" / "model-0__cpu__tp1__bf16-kv-auto" / "collectives" / "bandwidth.json"
     ).unlink()
    with (run_dir / "results.jsonl").open("a") as fh:
        fh.write('{"kind": "stage", "cell": "x", "sta')  # a killed run's last line
    page = _page(run_dir)
    assert "c=1: per-request TTFT/TPOT not recorded" in page
    assert "Verdict: NOT QUALIFIED" in page  # the per-size metrics replace the missing file


def test_gates_render_whatever_fields_they_carry():
    g = {"metric": "accuracy.x", "value": 0.5, "bound": ">= lb 0.6", "status": "FAILED",
         "ci": {"low": 0.41, "high": 0.59}, "p_value": 0.012, "method": "mcnemar"}
    assert facts.gate_status(g, "m/cpu/tp1/fp8-kv-fp8") == "failed"
    assert facts.gate_interval(g) == "[0.41, 0.59]"
    assert facts.gate_extras(g) == "p_value=0.012; method=mcnemar"
    old = {"metric": "a", "value": 1.0, "passed": True, "bound": "vs bf16"}
    assert facts.gate_status(old, "m/cpu/tp1/fp8-kv-fp8") == "unknown"
    assert facts.gate_status(old, "m/cpu/tp1/bf16-kv-auto") == "n/a"


def test_an_empty_run_renders_a_page_that_says_so(tmp_path):
    page = render_html(Run("r0", {}, []), [], tmp_path)
    assert "Verdict: INCOMPLETE" in page and "No stage was recorded in this run." in page


def test_cli_writes_report_html_and_names_a_missing_run(run_dir, capsys):
    assert main(["report", "--html", "--results-dir", str(run_dir.parent)]) == 0
    assert capsys.readouterr().out.strip() == str(run_dir / "report.html")
    assert main(["report", "nope", "--html", "--results-dir", str(run_dir.parent)]) == 2
    assert "no such run" in capsys.readouterr().err


def test_hint_comes_from_the_record_or_the_message():
    r = StageResult("c", "serving", "failed", message="c [serving]: died\n  hint: do this")
    assert facts.hint_of(r) == "do this" and facts.reason_of(r) == "c [serving]: died"
    assert json.dumps(facts.hint_of(StageResult("c", "s", "failed"))) == '""'


def test_an_unevaluated_bf16_comparison_is_flagged_beside_the_verdict(tmp_path):
    # today's records: an FP8 cell without a BF16 twin records the comparison as passed
    gate = {"metric": "accuracy.exact_match_strict", "value": 0.82, "passed": True,
            "bound": "vs bf16", "message": "m/cpu/tp2/fp8-kv-fp8: no BF16 cell to compare"}
    result = StageResult("m/cpu/tp2/fp8-kv-fp8", "accuracy", "passed", gates=[gate])
    page = render_html(Run("r1", {"matrix_stages": 1}, [result]), [], tmp_path)
    verdict_box = page[page.index('id="verdict"'):page.index("</div></div>")]
    assert "Verdict: QUALIFIED" in verdict_box
    assert "but 1 gate(s) could not be evaluated" in verdict_box
    gates = page[page.index('id="gates"'):]
    assert '<td class="unknown">' in gates and "no BF16 cell to compare" in gates


def test_per_request_tpot_from_the_forks_inter_token_gaps(tmp_path):
    # HabanaAI vllm-fork benchmark_serving.py --save-detailed: ttfts and itls, no latencies
    (tmp_path / "b.json").write_text(json.dumps({
        "ttfts": [0.1, 0.2], "itls": [[0.01, 0.03], [0.02]], "output_lens": [3, 2]}))
    result = StageResult("c", "throughput", "passed", artifacts={"bench@c4": "b.json"})
    data = facts.per_request(tmp_path, result)[4]
    assert data is not None
    assert data.ttft_ms == [100.0, 200.0] and data.e2el_ms == []
    assert [round(t, 6) for t in data.tpot_ms] == [20.0, 20.0]


def test_a_malformed_record_is_named_on_the_page_not_a_traceback(run_dir):
    with (run_dir / "results.jsonl").open("a") as fh:
        fh.write(json.dumps({"kind": "stage", "cell": "x/cpu/tp1/bf16-kv-auto", "stage":
                             "accuracy", "status": "passed", "metrics": "oops",
                             "gates": ["not a dict"], "artifacts": {"log": 3}}) + "\n")
    page = _page(run_dir)
    assert "results.jsonl: record 21 (x/cpu/tp1/bf16-kv-auto [accuracy]): malformed metrics, " \
           "gates, artifacts" in page
    assert "Verdict: NOT QUALIFIED" in page
