"""Backend registry: a name maps to a lazily imported class (heavy imports only when chosen)."""

from __future__ import annotations

import difflib
import importlib
from typing import Any

from harness.backends.base import Check
from harness.backends.base import CheckStatus
from harness.backends.base import Inventory
from harness.backends.contracts import Backend
from harness.errors import HarnessError

BACKENDS: dict[str, str] = {
    "cpu": "harness.backends.cpu:CpuBackend",
    "gaudi": "harness.backends.gaudi:GaudiBackend",
}

__all__ = ["BACKENDS", "Backend", "Check", "CheckStatus", "Inventory", "get"]


def get(name: str, options: dict[str, Any] | None = None) -> Backend:
    """Instantiate backend `name`; an unknown name gets a did-you-mean."""
    target = BACKENDS.get(name)
    if target is None:
        close = difflib.get_close_matches(name, list(BACKENDS), n=2)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise HarnessError(f"Unknown backend '{name}'.{hint} Available: {', '.join(BACKENDS)}")
    module_name, _, cls_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    backend: Backend = cls(options or {})
    return backend
