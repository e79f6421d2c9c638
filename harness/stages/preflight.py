"""Preflight: is the platform fit to run this cell? Every check says what to do when it is not."""

from __future__ import annotations

import json

from harness.backends.base import CheckStatus
from harness.errors import StageError
from harness.results import write_atomic
from harness.stages.base import StageContext


def run(ctx: StageContext) -> None:
    """Run the backend's checks for the cell; any FAIL fails the stage with the fix hints."""
    checks = ctx.backend.preflight_checks(ctx.cell)
    path = ctx.workdir / "checks.json"
    write_atomic(path, json.dumps([c.as_dict() for c in checks], indent=2, default=str))
    ctx.recorder.artifact("checks", path)
    counts = {status: 0 for status in CheckStatus}
    for check in checks:
        counts[check.status] += 1
        ctx.recorder.metric(f"check.{check.name}", check.status.value)
    for status, n in counts.items():
        ctx.recorder.metric(f"checks_{status.value}", n)
    failed = [c for c in checks if c.status is CheckStatus.FAIL]
    if failed:
        lines = [
            f"{c.name}: {c.message}" + (f" -> fix: {c.hint}" if c.hint else "") for c in failed
        ]
        raise StageError(
            ctx.cell.id, "preflight", f"{len(failed)} check(s) failed:\n  " + "\n  ".join(lines)
        )
    ctx.check_gates()
