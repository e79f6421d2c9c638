"""What a suite test calls: `stage.run(accuracy.run, server=server)`.

The suite names the stage function it runs, and passes exactly the fixtures that function takes
(a misspelt keyword is a TypeError, not a skip). Harness outcomes become pytest outcomes here:
a StageSkipped skips, a GateFailed or HarnessError fails with its message and no traceback.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from collections.abc import Iterator

import pytest

from harness.errors import HarnessError
from harness.results import StageResult
from harness.stages.base import GateFailed
from harness.stages.base import Recorder
from harness.stages.base import StageContext
from harness.stages.base import StageSkipped

StageFunction = Callable[..., None]


@contextlib.contextmanager
def as_pytest_outcomes() -> Iterator[None]:
    """Harness outcomes as pytest ones: skips skip, failures fail, no traceback."""
    skip, fail = None, None
    try:
        yield
    except StageSkipped as exc:
        skip = str(exc)
    except GateFailed as exc:
        fail = f"gate failed:\n{exc}"
    except HarnessError as exc:
        fail = str(exc)
    # raised outside the except blocks and `from None`: the report shows the message, no chain
    if skip is not None:
        raise pytest.skip.Exception(skip) from None
    if fail is not None:
        raise pytest.fail.Exception(fail, pytrace=False) from None


class StageRun:
    """The stage of one suite test, bound to its cell's context and recorder."""

    def __init__(self, context: StageContext) -> None:
        self.context = context

    @property
    def recorder(self) -> Recorder:
        return self.context.recorder

    def run(self, function: StageFunction, **fixtures: object) -> Recorder:
        """Run `function(ctx, **fixtures)`; it must be the `run` of this test's stage module."""
        stage = self.context.stage.value
        module = getattr(function, "__module__", "")
        if module.startswith("harness.stages.") and module != f"harness.stages.{stage}":
            raise pytest.UsageError(
                f"a {stage} test runs {module}.{getattr(function, '__name__', '?')}: "
                f"name harness.stages.{stage}.run (or mark the test with that stage)"
            )
        if self.recorder.referenced is not None:
            return self._refer(*self.recorder.referenced)
        start = time.monotonic()
        try:
            with as_pytest_outcomes():
                function(self.context, **fixtures)
        finally:
            self.recorder.metric("stage_wall_s", round(time.monotonic() - start, 3))
        return self.recorder

    def _refer(self, result: StageResult, unit: str) -> Recorder:
        """Take the node phase's record of these nodes as this cell's: its figures and gates,
        and its outcome (a failed node phase fails every cell on its nodes)."""
        rec = self.recorder
        rec.update(result.metrics)
        rec.artifacts.update(result.artifacts)
        said = referenced_message(result, unit)
        rec.notes.append(said)
        if result.status == "failed":
            pytest.fail(f"{said}:\n{result.message}", pytrace=False)
        if result.status == "skipped":
            pytest.skip(f"{said}: {result.message}")
        return rec


def referenced_message(result: StageResult, unit: str) -> str:
    """What a referring record says: the node phase measured these nodes once."""
    return (f"measured once for node set {unit} by {result.cell}'s {result.stage} stage "
            f"({result.status}); this cell runs on those nodes")
