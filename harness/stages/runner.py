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
        start = time.monotonic()
        try:
            with as_pytest_outcomes():
                function(self.context, **fixtures)
        finally:
            self.recorder.metric("stage_wall_s", round(time.monotonic() - start, 3))
        return self.recorder
