"""report.html and the dashboard in a real headless Chromium (Debian's package): no console
error, no request beyond the page's own files, every chart drawn, every artifact link resolves
(or is marked missing); screenshots kept as test artifacts.

Screenshots go to $HARNESS_TEST_ARTIFACTS (default: pytest's temporary directory).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from harness.report import synthetic
from harness.report.browser import Browser
from harness.report.browser import chromium_path
from harness.report.dashboard import build_dashboard
from harness.report.dashboard_source import RunDirSource
from harness.report.html import write_html
from harness.report.qualification import earlier_runs
from harness.report.qualification import load_run
from harness.report.qualification import verdict
from harness.results import ResultStore

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]

CHARTS_JS = """[...document.querySelectorAll('svg.plot')].map(s => ({
  shown: s.getClientRects().length > 0, width: s.getBBox().width,
  data: s.querySelectorAll('.data').length}))"""
LINKS_JS = """[...document.querySelectorAll('a[href]')].map(a => ({href: a.getAttribute('href'),
  missing: !!(a.nextElementSibling && a.nextElementSibling.classList.contains('missing'))}))"""


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chosen = os.environ.get("HARNESS_TEST_ARTIFACTS")
    path = Path(chosen) if chosen else tmp_path_factory.mktemp("browser-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    if chromium_path() is None:
        pytest.skip("chromium is not installed (make chromium)")
    with Browser(tmp_path_factory.mktemp("chromium-profile")) as b:
        yield b


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real smoke-cpu run (preflight and the gloo collectives: no vLLM, ~40 s), or the run
    named by $HARNESS_REAL_RUN (e.g. a `make qualify` run), copied so it is not modified."""
    root = tmp_path_factory.mktemp("real-reports")
    given = os.environ.get("HARNESS_REAL_RUN")
    if given:
        shutil.copytree(given, root / Path(given).name)
    else:
        env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
               "HF_DATASETS_OFFLINE": "1"}
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "suites", "--matrix", "smoke-cpu", "--stages",
             "preflight,collectives", "--results-dir", str(root), "-q", "-p",
             "no:cacheprovider"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    store = ResultStore(root)
    run_id = store.latest()
    assert run_id is not None
    run = load_run(store, run_id)
    return write_html(run, earlier_runs(store, run), root / run_id)


def step_detector(values: list[float]) -> list[int]:
    """A stand-in for the history package's detector: the largest mean shift, if over 5%."""
    def shift(i: int) -> float:
        return abs(sum(values[i:]) / (len(values) - i) - sum(values[:i]) / i)
    best = max(range(1, len(values)), key=shift)
    return [best] if shift(best) > 0.05 * abs(sum(values) / len(values)) else []


def _check(browser: Browser, page: Path, shot: Path) -> dict[str, Any]:
    """Open the page, assert it is clean, offline, fully drawn and linked; screenshot it."""
    visit = browser.open(page)
    assert visit.errors == []
    assert browser.evaluate("document.body.getAttribute('data-errors')") is None
    assert visit.requests == [page.resolve().as_uri()], "the page requested something else"
    charts = browser.evaluate(CHARTS_JS)
    assert charts, "no chart on the page"
    assert all(c["data"] > 0 for c in charts), "a chart without data marks"
    assert all(c["width"] > 0 for c in charts if c["shown"]), "a shown chart drew nothing"
    for link in browser.evaluate(LINKS_JS):
        href = link["href"]
        if href.startswith("#"):
            assert browser.evaluate(f"!!document.getElementById({href[1:]!r})"), href
        elif not link["missing"]:
            assert (page.parent / unquote(href)).exists(), f"dead link {href}"
    browser.screenshot(shot)
    return {"load_ms": visit.load_ms, "charts": len(charts), "bytes": page.stat().st_size}


def test_the_report_of_a_real_smoke_cpu_run(browser, real_run, artifacts):
    figures = _check(browser, real_run, artifacts / "report-real-smoke-cpu.png")
    text = browser.evaluate("document.body.innerText")
    store = ResultStore(real_run.parent.parent)
    word = verdict(load_run(store, real_run.parent.name))[0]
    assert f"Verdict: {word} —" in text  # the same verdict as report.md
    assert browser.evaluate("document.querySelectorAll('#gates tbody tr').length") >= 3
    assert "collectives.busbw_gbps" in text
    print(f"real smoke-cpu report: {figures}")


def test_a_failed_server_shows_hint_and_log_tail(browser, tmp_path, artifacts):
    cells = synthetic.cell_ids(4)
    run_dir = synthetic.write_run(tmp_path, "20261202-000000-000-0000", cells,
                                  fail_serving=cells[1])
    page = write_html(load_run(ResultStore(tmp_path), run_dir.name), [], run_dir)
    _check(browser, page, artifacts / "report-failed-server.png")
    failures = browser.evaluate("document.getElementById('failures').innerText")
    assert synthetic.FAILED_HINT in failures and synthetic.FAILED_LOG in failures
    assert "Verdict: NOT QUALIFIED" in browser.evaluate("document.body.innerText")


def test_the_dashboard_of_a_history(browser, tmp_path, artifacts):
    root = tmp_path / "reports"
    synthetic.write_history(root, 8, 4, step_at=5)
    index = build_dashboard(RunDirSource(root), tmp_path / "site", change_points=step_detector)
    _check(browser, tmp_path / "site" / "matrix-synthetic.html", artifacts / "dashboard.png")
    total = browser.evaluate("document.querySelectorAll('.trend').length")
    assert browser.evaluate("document.querySelectorAll('.trend line.marker').length") > 0
    browser.evaluate("var c = document.getElementById('cell-glob'); c.value = '*/tp2/fp8-*';"
                     "c.dispatchEvent(new Event('input'))")
    shown = browser.evaluate("[...document.querySelectorAll('.trend')]"
                             ".filter(e => e.style.display !== 'none').map(e => e.dataset.cell)")
    assert shown and set(shown) == {"model-0/cpu/tp2/fp8-kv-fp8"} and len(shown) < total
    browser.screenshot(artifacts / "dashboard-filtered.png", full_page=False)
    visit = browser.open(index)
    assert visit.errors == [] and visit.requests == [index.resolve().as_uri()]


def test_a_100_cell_report_loads_and_stays_small(browser, tmp_path, artifacts):
    """A benchmark figure, printed, not a timed assert (the issue's target: under 2 s)."""
    root = tmp_path / "reports"
    synthetic.write_history(root, 3, 100)
    store = ResultStore(root)
    run = load_run(store, store.runs()[-1])
    page = write_html(run, earlier_runs(store, run), root / run.run_id)
    figures = _check(browser, page, artifacts / "report-100-cells.png")
    print(f"100-cell report: {figures['bytes'] / 1e6:.2f} MB, {figures['charts']} charts, "
          f"loaded in {figures['load_ms']:.0f} ms")
    assert figures["bytes"] < 10_000_000
