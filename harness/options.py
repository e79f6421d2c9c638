"""Run options: declared once (pytest and the CLI share the spelling), resolved once."""

from __future__ import annotations

import argparse
import fnmatch
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

from harness.cell import STAGE_NAMES
from harness.cell import Stage
from harness.compare import RegressionCheck
from harness.compare import parse_compare_fail
from harness.errors import HarnessError

if TYPE_CHECKING:
    from harness.matrix import Matrix


def parse_stages(value: str) -> tuple[Stage, ...]:
    """`preflight,collectives` -> stages; an unknown name quotes the value and lists the known."""
    stages = []
    for raw in value.split(","):
        name = raw.strip()
        if not name:
            continue
        if name not in STAGE_NAMES:
            raise argparse.ArgumentTypeError(
                f"unknown stage {name!r} in --stages {value!r}; known: {', '.join(STAGE_NAMES)}"
            )
        stages.append(Stage(name))
    if not stages:
        raise argparse.ArgumentTypeError(f"--stages {value!r} names no stage")
    return tuple(stages)


def parse_globs(value: str) -> tuple[str, ...]:
    """`tiny-llama/*,*/tp2/*` -> globs on cell ids."""
    globs = tuple(g.strip() for g in value.split(",") if g.strip())
    if not globs:
        raise argparse.ArgumentTypeError(f"--cells {value!r} names no cell glob")
    return globs


def parse_compare_check(value: str) -> RegressionCheck:
    """parse_compare_fail, and the stage must exist (the metric is checked against what the
    baseline run recorded, `compare_fail_problem`: user-written stage tests add metrics)."""
    check = parse_compare_fail(value)
    stage_pat = check.metric.partition(".")[0]
    if not any(fnmatch.fnmatchcase(s, stage_pat) for s in STAGE_NAMES):
        raise argparse.ArgumentTypeError(
            f"--compare-fail {value!r}: no stage {stage_pat!r}; stages: {', '.join(STAGE_NAMES)}"
        )
    return check


def matches(check: RegressionCheck, metric: str) -> bool:
    """The rule harness.compare applies: a glob on `stage.metric`, or the name before `@`."""
    return fnmatch.fnmatchcase(metric, check.metric) or metric.split("@")[0] == check.metric


def compare_fail_problem(
    checks: Sequence[RegressionCheck], results_dir: Path, baseline: str
) -> str | None:
    """Why a --compare-fail check can never fire: the baseline run recorded no metric it
    matches. None when every check matches (or the baseline is missing: the session says)."""
    from harness.results import ResultStore

    store = ResultStore(results_dir)
    run_id = store.latest() if baseline == "latest" else baseline
    if run_id is None or run_id not in store.runs():
        return None
    recorded = sorted({
        f"{r.stage}.{k}"
        for r in store.load(run_id)
        for k, v in r.metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    })
    for check in checks:
        if not any(matches(check, m) for m in recorded):
            close = [m for m in recorded if m.split(".")[0] == check.metric.split(".")[0]]
            known = ", ".join((close or recorded)[:12]) or "no numeric metric"
            return (
                f"--compare-fail {check.metric}: the baseline run {run_id} recorded no metric "
                f"matching it, so the check would never fire; it recorded: {known}"
            )
    return None


def add_harness_options(addoption: Callable[..., Any]) -> None:
    """Options shared by the pytest plugin and `harness` CLI."""
    addoption(
        "--matrix",
        dest="harness_matrix",
        metavar="NAME|PATH",
        default=None,
        help="Matrix to qualify: a name in matrices/ or a YAML path. Default: smoke-cpu",
    )
    addoption(
        "--backend",
        dest="harness_backend",
        metavar="NAME",
        default=None,
        choices=("cpu", "gaudi"),
        help="Where stages run: cpu or gaudi. Default: the matrix's backend",
    )
    addoption(
        "--cells",
        dest="harness_cells",
        metavar="GLOBS",
        type=parse_globs,
        default=None,
        help="Only cells whose id matches one of these comma-separated globs",
    )
    addoption(
        "--stages",
        dest="harness_stages",
        metavar="STAGES",
        type=parse_stages,
        default=None,
        help=f"Only these comma-separated stages ({', '.join(STAGE_NAMES)})",
    )
    addoption(
        "--plan",
        dest="harness_plan",
        action="store_true",
        default=False,
        help="Print every selected cell's stages with exact commands and env; run nothing",
    )
    addoption(
        "--results-dir",
        dest="harness_results_dir",
        metavar="DIR",
        default=None,
        help="Where runs are written (<DIR>/<run-id>/results.jsonl). Default: reports",
    )
    addoption(
        "--resume",
        dest="harness_resume",
        metavar="RUN",
        default=None,
        help="Continue this run (a run id under --results-dir, or 'latest') in its directory: "
        "stages that passed keep their records and do not run again",
    )
    addoption(
        "--baseline",
        dest="harness_baseline",
        metavar="RUN",
        default=None,
        help="Compare with this earlier run (a run id under --results-dir, or 'latest')",
    )
    addoption(
        "--compare-fail",
        dest="harness_compare_fail",
        metavar="STAGE.METRIC:LIMIT",
        type=parse_compare_check,
        action="append",
        default=[],
        help="Fail the run when a metric regressed past LIMIT vs --baseline "
        "(e.g. throughput.output_throughput:-5%%, accuracy.exact_match_strict:-0.02)",
    )
    addoption(
        "--recalibrate-invalid",
        dest="harness_recalibrate_invalid",
        action="store_true",
        default=False,
        help="A cached calibration that fails its check is calibrated again instead of failing "
        "the cell (default: fail naming the file)",
    )
    addoption(
        "--harness-cache",
        dest="harness_cache",
        metavar="DIR",
        default=None,
        help="Cache of calibrations and built artifacts shared by runs. Default: .cache/harness",
    )


@dataclass(frozen=True)
class RunOptions:
    """Resolved options: CLI, then ini, then default. Nothing else reads config options."""

    matrix: str
    backend: str | None
    cells: tuple[str, ...] | None
    stages: tuple[Stage, ...] | None
    plan: bool
    results_dir: Path
    cache_dir: Path
    baseline: str | None = None
    compare_fail: tuple[RegressionCheck, ...] = ()
    # the options that narrowed the run to part of the matrix, as typed (for the report)
    selection: tuple[str, ...] = ()
    recalibrate_invalid: bool = False  # for calibration.service.ensure(recalibrate_invalid=)
    history_url: str | None = None  # the history database every result also goes to; None: off
    resume: str | None = None  # --resume: the run id (or "latest") to continue

    @classmethod
    def from_config(cls, config: Any) -> RunOptions:
        root = Path(config.rootpath)

        def pick(dest: str, ini: str, default: str | None) -> str | None:
            value = config.getoption(dest)
            if value is None:
                value = config.getini(ini) or None
            return value if value is not None else default

        results = Path(pick("harness_results_dir", "harness_results_dir", "reports") or "reports")
        cache = Path(pick("harness_cache", "harness_cache", ".cache/harness") or ".cache/harness")
        checks = tuple(config.getoption("harness_compare_fail") or ())
        baseline = config.getoption("harness_baseline")
        if checks:
            import pytest

            if baseline is None:
                raise pytest.UsageError(compare_without_baseline(checks))
            if getattr(config, "workerinput", None) is None:  # xdist workers: the controller
                problem = compare_fail_problem(checks, _under(root, results), baseline)
                if problem:
                    raise pytest.UsageError(problem)
        from harness.history.options import resolve_history_url
        from harness.history.url import HistoryError

        try:
            history_url = resolve_history_url(
                config.getoption("harness_history_db", None),
                config.getini("harness_history_db") or None,
                _under(root, results),
            )
        except HistoryError as exc:
            import pytest

            raise pytest.UsageError(f"--history-db / harness_history_db: {exc}") from None
        return cls(
            matrix=pick("harness_matrix", "harness_matrix", "smoke-cpu") or "smoke-cpu",
            backend=pick("harness_backend", "harness_backend", None),
            cells=config.getoption("harness_cells"),
            stages=config.getoption("harness_stages"),
            plan=bool(config.getoption("harness_plan")),
            results_dir=_under(root, results),
            cache_dir=cache if cache.is_absolute() else root / cache,
            baseline=config.getoption("harness_baseline"),
            compare_fail=checks,
            selection=_selection(config),
            recalibrate_invalid=bool(config.getoption("harness_recalibrate_invalid", False)),
            history_url=history_url,
            resume=config.getoption("harness_resume", None),
        )


def _under(root: Path, path: Path) -> Path:
    return path if path.is_absolute() else root / path


def _selection(config: Any) -> tuple[str, ...]:
    """--cells, --stages, -k and -m as given: what made this run a part of its matrix."""
    out = []
    cells = config.getoption("harness_cells")
    if cells:
        out.append("--cells " + ",".join(cells))
    stages = config.getoption("harness_stages")
    if stages:
        out.append("--stages " + ",".join(s.value for s in stages))
    for flag, dest in (("-k", "keyword"), ("-m", "markexpr")):
        value = config.getoption(dest, default="")
        if value:
            out.append(f"{flag} {value}")
    return tuple(out)


def compare_without_baseline(checks: Sequence[RegressionCheck]) -> str:
    """The usage error of --compare-fail given alone: there is nothing to compare with."""
    given = ", ".join(f"{c.metric}" for c in checks)
    return (
        f"--compare-fail ({given}) needs --baseline RUN (a run id under --results-dir, or "
        "'latest'): without a baseline nothing is compared and the check would never fire"
    )


def check_selection(
    matrix: Matrix, cells: Sequence[str] | None, stages: Sequence[Stage] | None
) -> None:
    """A --cells glob or --stages list that selects nothing is an error, not "N deselected".

    Call it right after the matrix is loaded (the plugin turns the HarnessError into a usage
    error). Every glob must match a cell id; the selected cells must run a selected stage."""
    ids = [c.id for c in matrix.cells]
    sample = ", ".join(ids[:5]) + (f" (and {len(ids) - 5} more)" if len(ids) > 5 else "")
    for glob in cells or ():
        if not any(fnmatch.fnmatchcase(i, glob) for i in ids):
            raise HarnessError(
                f"--cells {glob!r} matches no cell of {matrix.path} (globs match whole ids, "
                f"e.g. 'model/*'); cells: {sample}"
            )
    chosen = [c for c in matrix.cells if not cells or any(
        fnmatch.fnmatchcase(c.id, g) for g in cells)]
    if stages and not any(c.runs(s) for c in chosen for s in stages):
        runs = sorted({s.value for c in chosen for s in c.stages}, key=STAGE_NAMES.index)
        raise HarnessError(
            f"--stages {','.join(s.value for s in stages)}: no selected cell of {matrix.path} "
            f"runs these stages (they run: {', '.join(runs)}; a BF16 cell has no calibration)"
        )
