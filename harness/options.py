"""Run options: declared once (pytest and the CLI share the spelling), resolved once."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.cell import STAGE_NAMES
from harness.cell import Stage
from harness.compare import RegressionCheck
from harness.compare import parse_compare_fail


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
        type=parse_compare_fail,
        action="append",
        default=[],
        help="Fail the run when a metric regressed past LIMIT vs --baseline "
        "(e.g. throughput.output_throughput:-5%%, accuracy.exact_match_strict:-0.02)",
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
        return cls(
            matrix=pick("harness_matrix", "harness_matrix", "smoke-cpu") or "smoke-cpu",
            backend=pick("harness_backend", "harness_backend", None),
            cells=config.getoption("harness_cells"),
            stages=config.getoption("harness_stages"),
            plan=bool(config.getoption("harness_plan")),
            results_dir=results if results.is_absolute() else root / results,
            cache_dir=cache if cache.is_absolute() else root / cache,
            baseline=config.getoption("harness_baseline"),
            compare_fail=tuple(config.getoption("harness_compare_fail") or ()),
            selection=_selection(config),
        )


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
