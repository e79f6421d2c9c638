"""Serving: the cell's server becomes ready and answers a chat completion."""

import pytest

from harness.stages import serving

pytestmark = pytest.mark.serving


def test_serving(stage, server):
    stage.run(serving.run, server=server)
