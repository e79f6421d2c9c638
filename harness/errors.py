"""Errors a user can act on: each names the file, key, cell, rank or command."""

from __future__ import annotations

from pathlib import Path


class HarnessError(Exception):
    """Base of every error the harness raises for bad input or a failed step."""


class MatrixError(HarnessError):
    """A matrix file is malformed or describes an impossible cell."""

    def __init__(self, path: Path | str, key: str, reason: str) -> None:
        self.path = str(path)
        self.key = key
        self.reason = reason
        where = f"{self.path}: {key}: " if key else f"{self.path}: "
        super().__init__(where + reason)


class MeasurementError(HarnessError):
    """An INC measurement set is unreadable or inconsistent."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class StageError(HarnessError):
    """A stage could not do its work; carries the cell id and a fix hint."""

    def __init__(self, cell_id: str, stage: str, reason: str, hint: str = "") -> None:
        self.cell_id = cell_id
        self.stage = stage
        self.reason = reason
        self.hint = hint
        text = f"{cell_id} [{stage}]: {reason}"
        if hint:
            text += f"\n  hint: {hint}"
        super().__init__(text)


class HarnessWarning(UserWarning):
    """Base of the harness's warnings."""
