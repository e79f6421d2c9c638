"""The plan shows each cell's stack, as text for people and as records for tooling."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from harness import backends
from harness.cell import STAGE_ORDER
from harness.matrix import load_matrix
from harness.plan import plan_records
from harness.plan import render_plan
from harness.plan import render_plan_json


def _pairs(matrix: str) -> list:
    return [(c, s) for c in load_matrix(matrix).cells for s in STAGE_ORDER if c.runs(s)]


def test_the_text_plan_names_the_stack_of_every_cell() -> None:
    gaudi = backends.get("gaudi", {})
    text = render_plan(_pairs("deepseek-r1-multinode"), gaudi, Path("/runs/r"))
    headers = [line for line in text.splitlines() if line.startswith("cell ")]
    assert len(headers) == len(load_matrix("deepseek-r1-multinode").cells)
    assert "cell deepseek-v3.1/g2-n2/tp16-ep16/fp8-kv-fp8_inc  [gaudi backend, stack vllm-fork, " \
        "16 rank(s)]" in headers
    assert "cell llama-3.1-405b/g2-n2/tp8-pp2/fp8-kv-fp8_inc  [gaudi backend, stack vllm-gaudi, " \
        "16 rank(s)]" in headers


def test_plan_records_carry_argv_env_cwd_node_and_stack_and_match_the_text_plan() -> None:
    gaudi = backends.get("gaudi", {})
    pairs = _pairs("deepseek-r1-multinode")
    records = json.loads(render_plan_json(pairs, gaudi, Path("/runs/r")))
    assert records == plan_records(pairs, gaudi, Path("/runs/r"))
    by_cell = {r["cell"]: r for r in records}
    v31 = by_cell["deepseek-v3.1/g2-n2/tp16-ep16/fp8-kv-fp8_inc"]
    assert v31["stack"] == "vllm-fork" and v31["ranks"] == 16
    stages = {s["stage"]: s for s in v31["stages"]}
    measure = stages["calibration"]["steps"][0]
    assert measure["argv"][:2] == ["bash", "scripts/run_inc_calib.sh"]
    assert measure["cwd"] == "/workspace/vllm-fork" and measure["node"] == 0
    serve = stages["serving"]["steps"][-1]
    assert serve["argv"][:3] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    assert serve["env"]["VLLM_EP_SIZE"] == "16"
    text = render_plan(pairs, gaudi, Path("/runs/r"))
    for record in records:  # every step of the records is a line of the text plan
        for stage in record["stages"]:
            for step in stage["steps"]:
                assert shlex.join(step["argv"]) in text
