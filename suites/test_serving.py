"""Serving: the cell's server becomes ready and answers a chat completion."""

import pytest

pytestmark = pytest.mark.serving


def test_serving(cell, server, stage):
    stage.run(server=server)
