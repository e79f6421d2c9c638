"""A corrupt cached measurement (a torn write in the calibration cache) under a real run that
does not select the calibration stage: the serving stage refuses it naming the file before any
vLLM starts, and the next run asked to (--recalibrate-invalid) calibrates it again."""

from __future__ import annotations

import json
import shutil

import pytest
from faultkit import FP8
from faultkit import own_traceback
from faultkit import smoke_matrix

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def test_a_corrupt_cached_measurement_is_named_and_recalibrated_on_request(
    harness, ledger, fault, tmp_path, calibrated_cache
):
    fault("corrupt cached measurement")
    cache = tmp_path / "cache"
    shutil.copytree(calibrated_cache, cache)  # the suite's own cache stays good
    (served,) = cache.glob("calibration/tiny-llama-*/derived-tp1-ep1/tiny-llama/cpu/"
                           "*_hooks_maxabs_0_1.json")
    good = served.read_text()
    served.write_text(good[: len(good) // 2])  # cut off mid-file, as a crash mid-write would

    matrix = smoke_matrix(tmp_path / "smoke.yaml")
    run = harness(matrix, "--harness-cache", str(cache), cells=FP8, stages="serving")
    assert run.finish() == 1, run.output()[-3000:]
    assert not own_traceback(run.output()), run.output()[-3000:]
    records = run.records()
    (serving,) = [r for r in records if r["kind"] == "stage"]
    assert serving["stage"] == "serving" and serving["status"] == "failed"
    assert str(served) in serving["message"] and "cannot be served" in serving["message"]
    assert run.group("serve") is None  # refused before vLLM was started on it
    assert records[-1]["kind"] == "end" and records[-1]["status"] == "completed"
    assert str(served) in (run.run_dir / "summary.md").read_text()
    assert not ledger.count_lost(run)
    run.none_left(ledger)

    again = harness(matrix, "--harness-cache", str(cache), "--recalibrate-invalid", cells=FP8,
                    stages="calibration")
    assert again.finish(400) == 0, again.output()[-3000:]
    assert json.loads(served.read_text())["Nodes"]  # calibrated again, whole
    assert not ledger.count_lost(again)
    again.none_left(ledger)
