"""JUnit a CI page shows well: the failure's hint and log tail in its message, report links,
artifacts and gates in properties; wired through a real pytest run as the plugin will."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from harness.report import synthetic
from harness.report.junit import junit_case
from harness.results import StageResult
from harness.results import stage_results

CELLS = synthetic.cell_ids(2)


def _results(tmp_path: Path) -> tuple[Path, list[StageResult]]:
    run_dir = synthetic.write_run(tmp_path, "r1", CELLS, fail_serving=CELLS[1])
    return run_dir, stage_results(run_dir / "results.jsonl")


def test_a_failed_server_carries_reason_hint_and_log_tail(tmp_path):
    run_dir, results = _results(tmp_path)
    failed = next(r for r in results if r.status == "failed")
    case = junit_case(failed, run_dir, "https://ci.example/job/1/artifact/reports/r1")
    lines = case.message.splitlines()
    assert lines[0] == f"{CELLS[1]} [serving]: the server exited with 1 before /health answered"
    assert lines[1] == f"fix: {synthetic.FAILED_HINT}"
    assert lines[2] == "--- last 20 lines of cells/model-0__cpu__tp1__fp8-kv-fp8/serving/server.log ---"
    assert lines[-1] == synthetic.FAILED_LOG and len(lines) == 3 + 20
    props = dict(case.properties)
    assert props["report.report.html"] == "https://ci.example/job/1/artifact/reports/r1/report.html"
    assert props["log"].endswith("/serving/server.log") and props["hint"] == synthetic.FAILED_HINT


def test_a_passed_stage_has_no_message_and_lists_artifacts_and_gates(tmp_path):
    run_dir, results = _results(tmp_path)
    acc = next(r for r in results if r.stage == "accuracy")
    case = junit_case(acc, run_dir)
    assert case.message == ""
    props = dict(case.properties)
    assert props["report.report.html"] == str(run_dir / "report.html")
    value = props["gate.accuracy.exact_match_strict"]
    assert ">= 0.6 passed [" in value
    coll = junit_case(next(r for r in results if r.stage == "collectives"), run_dir)
    assert dict(coll.properties)["artifact.bandwidth"].endswith("collectives/bandwidth.json")


CONFTEST = """
from pathlib import Path
import pytest
from harness.report.junit import junit_case
from harness.results import StageResult

RUN_DIR = Path(@RUN@)

@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        result = StageResult("CELL", "serving", "failed" if report.failed else "passed",
                             message="CELL [serving]: the server exited\\n  hint: HINT")
        case = junit_case(result, RUN_DIR)
        item.user_properties.extend(case.properties)
        if case.message:
            report.longrepr = case.message
    return report
"""


def test_wired_like_the_plugin_the_junit_xml_shows_hint_tail_and_links(tmp_path, pytester):
    run_dir, _ = _results(tmp_path)
    pytester.makeconftest(CONFTEST.replace("@RUN@", repr(str(run_dir))).replace(
        "CELL", CELLS[1]).replace("HINT", synthetic.FAILED_HINT))
    pytester.makepyfile(test_stage="def test_serving():\n    assert False\n")
    pytester.runpytest("-p", "no:cacheprovider", "--junitxml=junit.xml").assert_outcomes(failed=1)
    case = ET.parse(pytester.path / "junit.xml").getroot().find(".//testcase")
    assert case is not None
    failure = case.find("failure")
    assert failure is not None
    message = failure.get("message", "")
    assert f"fix: {synthetic.FAILED_HINT}" in message and synthetic.FAILED_LOG in message
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert props["report.report.html"] == str(run_dir / "report.html")
    assert props["status"] == "failed" and props["stage"] == "serving"
