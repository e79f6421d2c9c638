"""Atomic file writes, once: readers see the old file or the whole new one, never half of it.

(Whole measurement directories are staged and swapped by harness/measurements/atomic.py.)
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; when the block ends without error it replaces `path`
    in one rename (same directory, same file system), else it is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` atomically, flushed to disk before the rename."""
    with replacing(path) as tmp, tmp.open("w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def write_json(path: Path, data: Any) -> None:
    """JSON (indented, keys sorted) written atomically: a crash never leaves half a record."""
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
