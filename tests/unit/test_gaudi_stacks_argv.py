"""Every server and benchmark argv the gaudi plans emit, parsed by its stack's own parser.

vllm-gaudi stack: the installed vLLM 0.32 is the upstream vLLM the plugin runs on, so its
`vllm serve` parser (vllm/entrypoints/cli/serve.py ServeSubcommand.subparser_init) and its
`vllm bench serve` parser (vllm/entrypoints/cli/benchmark/serve.py, vllm/benchmarks/serve.py
add_cli_args) parse the argv directly: an unknown flag or a wrongly typed value fails.

vllm-fork stack: the flags of HabanaAI/vllm-fork deepseek_r1 @016b6bd20585 (vllm/engine/
arg_utils.py, vllm/entrypoints/openai/cli_args.py, benchmarks/benchmark_serving.py), extracted
from its source by tests/data/vllm_fork/extract_flags.py into flags_016b6bd20585.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from harness import backends
from harness.cell import Cell
from harness.cell import Stage
from harness.matrix import load_matrix

WORKDIR = Path("/runs/r1/cells/c")
MATRICES = ("nightly-g2", "nightly-g3", "deepseek-r1-multinode")
FORK_FLAGS = Path(__file__).parents[1] / "data" / "vllm_fork" / "flags_016b6bd20585.json"


@pytest.fixture(scope="module")
def gaudi() -> Any:
    return backends.get("gaudi", {})


@pytest.fixture(scope="module")
def vllm_parsers() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    pytest.importorskip("vllm")
    from vllm.entrypoints.cli.benchmark.serve import BenchmarkServingSubcommand
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    top = FlexibleArgumentParser(prog="vllm")
    serve = ServeSubcommand().subparser_init(top.add_subparsers(dest="subparser"))
    bench = FlexibleArgumentParser(prog="vllm bench serve")
    BenchmarkServingSubcommand.add_cli_args(bench)
    return serve, bench


def _cells(stack: str) -> list[Cell]:
    """Every cell of every shipped gaudi matrix, on `stack` (the shipped one and the other)."""
    cells = []
    for name in MATRICES:
        for cell in load_matrix(name).cells:
            opts = {**cell.backend_options, "stack": stack}
            if stack == "vllm-gaudi":  # the load rules of stacks.cell_reason for this stack
                s = cell.settings.model_copy(
                    update={"serving": cell.settings.serving.model_copy(
                        update={"weights_load_device": None})}
                )
                cell = dataclasses.replace(cell, settings=s)
            cells.append(dataclasses.replace(cell, backend_options=opts))
    return cells


def _commands(gaudi: Any, cell: Cell) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
    serve = [c.argv for c in gaudi.plan(cell, Stage.SERVING, WORKDIR / "serving")
             if c.argv[0] not in ("ray", "export")]
    bench = [c.argv for c in gaudi.plan(cell, Stage.THROUGHPUT, WORKDIR / "throughput")]
    return serve, bench


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    try:
        return parser.parse_args(argv)
    except SystemExit:
        pytest.fail(f"vLLM 0.32 rejects: {' '.join(argv)}")


def test_every_vllm_gaudi_serve_and_bench_argv_parses_with_the_installed_vllm(
    gaudi: Any, vllm_parsers: tuple[argparse.ArgumentParser, argparse.ArgumentParser]
) -> None:
    serve_parser, bench_parser = vllm_parsers
    checked = 0
    for cell in _cells("vllm-gaudi"):
        serves, benches = _commands(gaudi, cell)
        (argv,) = serves
        assert argv[:2] == ("vllm", "serve")
        ns = _parse(serve_parser, list(argv[2:]))
        assert ns.model_tag == str(cell.model.source)
        assert ns.tensor_parallel_size == cell.tp and ns.pipeline_parallel_size == cell.pp
        assert ns.max_model_len == cell.settings.serving.max_model_len
        assert ns.max_num_seqs == cell.settings.serving.max_num_seqs
        assert ns.kv_cache_dtype == cell.kv_cache_dtype
        assert ns.enable_expert_parallel is (cell.ep > 1)
        assert ns.quantization == ("inc" if "--quantization" in argv else None)
        assert ns.distributed_executor_backend == ("ray" if cell.multi_node else None)
        assert ns.port == 8688 and ns.served_model_name == [str(cell.model.source)]
        for argv in benches:
            assert argv[:3] == ("vllm", "bench", "serve")
            ns = _parse(bench_parser, list(argv[3:]))
            assert ns.max_concurrency in cell.settings.throughput.concurrencies
            assert ns.random_input_len == 1024 and ns.num_prompts >= 8
            assert ns.save_result is True and ns.ignore_eos is True
        checked += 1
    assert checked == sum(len(load_matrix(m).cells) for m in MATRICES)


def test_vllm_032_rejects_the_fork_only_flags(
    vllm_parsers: tuple[argparse.ArgumentParser, argparse.ArgumentParser],
) -> None:
    """Why the vllm-gaudi profile never emits them: the real parser refuses."""
    serve_parser, _ = vllm_parsers
    with pytest.raises(SystemExit):
        serve_parser.parse_args(["m", "--weights-load-device", "cpu"])
    ns = serve_parser.parse_args(["m", "--enable-expert-parallel", "--max-num-seqs", "8"])
    assert ns.enable_expert_parallel is True  # a switch here; the fork's takes a value


def _fork_check(flags: dict[str, dict[str, Any]], argv: tuple[str, ...]) -> list[str]:
    """Problems of `argv` against the fork's flag table: unknown flag, missing value, choice."""
    problems, i = [], 0
    while i < len(argv):
        token = argv[i]
        spec = flags.get(token)
        if spec is None:
            problems.append(f"unknown flag {token}")
            i += 1
            continue
        if spec["value"]:
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                problems.append(f"{token} needs a value")
                i += 1
                continue
            if spec["choices"] and argv[i + 1] not in spec["choices"]:
                problems.append(f"{token} {argv[i + 1]} not in {spec['choices']}")
            i += 2
        else:
            i += 1
    return problems


def test_every_vllm_fork_server_and_benchmark_argv_uses_the_forks_flags(gaudi: Any) -> None:
    table = json.loads(FORK_FLAGS.read_text(encoding="utf-8"))
    assert table["commit"].startswith("016b6bd20585")
    checked = 0
    for cell in _cells("vllm-fork"):
        serves, benches = _commands(gaudi, cell)
        (argv,) = serves
        assert argv[:3] == ("python3", "-m", "vllm.entrypoints.openai.api_server")
        assert _fork_check(table["serve"], argv[3:]) == [], cell.id
        assert "--enable-expert-parallel" not in argv  # default True there; EP via VLLM_EP_SIZE
        for argv in benches:
            assert argv[:2] == ("python3", "benchmarks/benchmark_serving.py")
            assert _fork_check(table["bench"], argv[2:]) == [], cell.id
        checked += 1
    assert checked == sum(len(load_matrix(m).cells) for m in MATRICES)


def test_the_fork_table_knows_its_own_flags() -> None:
    """The table is the fork's, not vLLM 0.32's: fork-only flags present, with their arity."""
    table = json.loads(FORK_FLAGS.read_text(encoding="utf-8"))
    assert table["serve"]["--weights-load-device"]["value"] is True
    assert table["serve"]["--enable-expert-parallel"]["value"] is True  # arg_utils.py:446-450
    assert "fp8_inc" in table["serve"]["--kv-cache-dtype"]["choices"]
    assert _fork_check(table["serve"], ("--enable-expert-parallel", "--max-num-seqs", "8")) == [
        "--enable-expert-parallel needs a value"
    ]
