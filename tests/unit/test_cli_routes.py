"""`harness plan --json` and `harness collectives check` go through the real CLI parser."""

from __future__ import annotations

import json
from pathlib import Path

from harness import cli

HCCL = Path(__file__).resolve().parents[1] / "data" / "hccl"


def test_plan_json_is_one_record_per_cell_with_its_stack_and_argv_lists(capsys):
    rc = cli.main(["plan", "--matrix", "nightly-g2", "--json", "--cells", "llama-3.1-8b/*",
                   "--stages", "serving"])
    assert rc == 0
    records = json.loads(capsys.readouterr().out)
    assert records and all(r["cell"].startswith("llama-3.1-8b/") for r in records)
    assert {r["stack"] for r in records} == {"vllm-gaudi"}
    steps = [s for r in records for st in r["stages"] for s in st["steps"]]
    assert all(st["stage"] == "serving" for r in records for st in r["stages"])
    assert any(s["argv"][:2] == ["vllm", "serve"] for s in steps)


def test_plan_json_refuses_a_glob_that_selects_nothing(capsys):
    assert cli.main(["plan", "--matrix", "nightly-g2", "--json", "--cells", "nope/*"]) == 2
    assert "--cells 'nope/*' matches no cell" in capsys.readouterr().err


def test_collectives_check_reads_a_recorded_hccl_demo_log(capsys):
    rc = cli.main(["collectives", "check", str(HCCL / "seed003_g2_1node_8ranks.txt"),
                   "--device", "g2"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "all_reduce, 8 ranks" in out and "258.259" in out
