"""Project tests: offline HF libraries, and the repo paths tests share."""

from __future__ import annotations

import os
from pathlib import Path

import numpy  # noqa: F401  (see below)
import pytest
import scipy.stats  # noqa: F401
import sqlalchemy  # noqa: F401

# pytester's in-process runs drop the modules a run imported; NumPy imported again breaks
# ("_CopyMode.IF_NEEDED is neither True nor False"), so the libraries a run's end uses (the
# history's statistics) are imported once here, before any inner run
REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def shared_data() -> Path:
    """Real Gaudi measurement sets beside the repo (never copied into it)."""
    root = Path(os.environ.get("HARNESS_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not root.is_dir():
        pytest.skip(f"shared data not found at {root} (set HARNESS_SHARED_DATA)")
    return root
