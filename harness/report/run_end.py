"""End of a run: summary.md, report.md (+ trend.png) and, against a baseline, compare.md.

Everything is read back from the run's results.jsonl (the record of truth, which every xdist
worker appended to), so what the files say is what was recorded, whichever process ran it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.compare import RegressionCheck
from harness.compare import compare
from harness.compare import render_compare
from harness.errors import HarnessError
from harness.report.markdown import render_summary
from harness.results import ResultStore
from harness.results import RunStore
from harness.results import StageResult
from harness.results import read_records
from harness.results import stage_results
from harness.results import write_atomic
from harness.workplan.figures import units_section


@dataclass(frozen=True)
class Baseline:
    """The --baseline run: its id and records, loaded before anything runs."""

    run_id: str
    results: list[StageResult]


def load_baseline(results_dir: Path, which: str | None) -> Baseline | None:
    """`which` is a run id or `latest`; a missing run fails fast, naming the runs there are."""
    if which is None:
        return None
    store = ResultStore(results_dir)
    run_id = store.latest() if which == "latest" else which
    if run_id is None or run_id not in store.runs():
        raise HarnessError(
            f"--baseline {which}: no such run in {results_dir} "
            f"(runs: {', '.join(store.runs()[-5:]) or 'none'})"
        )
    return Baseline(run_id, store.load(run_id))


def write_qualification(
    results_dir: Path,
    run_id: str,
    directory: Path,
    against: Sequence[str] = (),
    units: Sequence[str] = (),
) -> None:
    """report.md (+ trend.png) for sign-off; a broken plot must not cost the run's end."""
    from harness.report import qualification

    store = ResultStore(results_dir)
    try:
        run = qualification.load_run(store, run_id)
        history = qualification.earlier_runs(store, run)
        qualification.write_report(run, history, directory, against, units)
        from harness.report.html import write_html

        write_html(run, history, directory)
    except (OSError, ValueError, ImportError, RuntimeError) as exc:
        print(
            f"harness: report.md/report.html not written ({type(exc).__name__}: {exc}); "
            f"summary.md and results.jsonl are complete",
            file=sys.stderr,
        )


def finish_run(
    store: RunStore,
    matrix_name: str,
    baseline: Baseline | None,
    checks: Sequence[RegressionCheck],
    ending: str = "",
    against: Sequence[str] = (),
) -> list[str]:
    """Write the run's end files; return the regressions against the baseline, one line each.

    `ending` (an interrupted run's "INTERRUPTED by SIGINT; ...") heads summary.md."""
    if not store.path.is_file():
        return []
    results = stage_results(store.path)
    summary = render_summary(results, matrix_name, store.run_id)
    if ending:
        title, _, rest = summary.partition("\n")
        summary = f"{title}\n\n**{ending}**\n{rest}"
    units = units_section(read_records(store.path))
    if units:
        summary += "\n" + "\n".join(units) + "\n"
    write_atomic(store.dir / "summary.md", summary)
    write_qualification(store.root, store.run_id, store.dir, against, units)
    if baseline is None:
        return []
    deltas = compare(baseline.results, results, checks)
    write_atomic(
        store.dir / "compare.md", render_compare(deltas, baseline.run_id, store.run_id)
    )
    return [
        f"{d.cell}: {d.metric} {d.base:.4g} -> {d.value:.4g} {d.failure} "
        f"(baseline run {baseline.run_id})"
        for d in deltas
        if d.failure
    ]
