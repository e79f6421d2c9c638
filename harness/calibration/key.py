"""Calibrate once: a calibration is keyed by what changes its numbers, and cached under a lock.

The key is (model, device, dataset, sample count, measure config, quant config, the TP/EP it ran
at), plus a fingerprint of the weights and the harness's calibration format version. A changed
key is a new directory, so a stale measurement or scale file can never be picked up for a new
calibration (the stale-scale trap), and nothing is ever measured into a directory that already
holds files (INC's backup-folder trap).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import fileio
from harness.errors import HarnessError

# bump when the layout or the meaning of the files changes: old cache entries are then ignored
FORMAT_VERSION = 1
DONE = "done.json"


@dataclass(frozen=True)
class CalibrationKey:
    """What makes two calibrations interchangeable."""

    model: str  # calibrate_model.sh's folder name (lower-case last folder of -m)
    model_fingerprint: str  # weights/config fingerprint (or the hub id for remote models)
    device: str  # cpu | g2 | g3: where the scales are valid
    dataset: str  # digest of the calibration pickle
    samples: int  # -l
    max_seq_len: int | None  # prompt truncation (cpu); None on gaudi (the script's default)
    measure_config: str  # canonical JSON without dump_stats_path
    quant_config: str  # canonical JSON without dump_stats_path
    tp: int
    ep: int
    backend: str
    version: int = FORMAT_VERSION

    @property
    def digest(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    @property
    def dirname(self) -> str:
        """Readable and unique: `<model>-<device>-tp<T>-ep<E>-<digest12>`."""
        return f"{self.model}-{self.device}-tp{self.tp}-ep{self.ep}-{self.digest[:12]}"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "digest": self.digest}


def canonical(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, separators=(",", ":"))


def file_digest(path: Path) -> str:
    """sha256 of a file (calibration pickles are small: hashing is cheaper than a wrong hit)."""
    h = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    except OSError as exc:
        raise HarnessError(
            f"{path}: cannot read the calibration dataset ({exc.strerror})"
        ) from None
    return h.hexdigest()


def model_fingerprint(source: str) -> str:
    """Config content plus name/size/mtime of every file of a local model dir; the id otherwise.

    Retraining or replacing the weights changes it, so a stale calibration is not reused.
    """
    root = Path(source)
    if not root.is_dir():
        return f"id:{source}"
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    config = root / "config.json"
    if config.is_file():
        h.update(config.read_bytes())
    return h.hexdigest()


@contextlib.contextmanager
def locked(path: Path, timeout_s: float) -> Iterator[None]:
    """An exclusive lock file beside a cache entry (xdist workers and parallel runs share it)."""
    from filelock import FileLock
    from filelock import Timeout

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=timeout_s)
    except Timeout:
        raise HarnessError(
            f"{path}: another run holds this calibration's lock for more than {timeout_s:g} s; "
            "wait for it or remove the lock file if no harness process is running"
        ) from None
    try:
        yield
    finally:
        lock.release()


def read_done(entry: Path) -> dict[str, Any] | None:
    """The completion record of a cache entry, or None if it is absent or unreadable."""
    try:
        done: dict[str, Any] = json.loads((entry / DONE).read_text(encoding="utf-8"))
        return done
    except (OSError, ValueError):
        return None
    return done if isinstance(done, dict) else None


class InvalidEntry(HarnessError):
    """A cached calibration whose files are missing or corrupt: never served (vLLM would crash
    on it with a message that does not name the file)."""

    def __init__(self, entry: Path, path: Path | str, reason: str) -> None:
        self.entry = entry
        super().__init__(
            f"{path}: {reason}; the cached calibration {entry} cannot be served: delete that "
            "directory and rerun (the cell calibrates again)"
        )


def entry_problem(
    entry: Path, quant_config: Path, measurement_dir: Path, world: int, device: str | None
) -> InvalidEntry | None:
    """Why the set a cell would serve from `entry` is unusable, or None (quick: the config
    parses, and the measurement checker finds every rank's files and reads them)."""
    from harness.errors import MeasurementError
    from harness.measurements import check

    try:
        cfg = json.loads(quant_config.read_text(encoding="utf-8"))
    except OSError as exc:
        return InvalidEntry(entry, quant_config, f"cannot read the quant config ({exc.strerror})")
    except ValueError as exc:
        return InvalidEntry(entry, quant_config, f"the quant config is not valid JSON ({exc})")
    if not isinstance(cfg, dict) or not isinstance(cfg.get("dump_stats_path"), str):
        return InvalidEntry(entry, quant_config, "the quant config has no dump_stats_path")
    try:
        report = check(measurement_dir, device=device, world=world)
    except MeasurementError as exc:
        return InvalidEntry(entry, exc.path, exc.reason)
    if report.ok:
        return None
    first, more = report.errors[0], len(report.errors) - 1
    extra = f" (and {more} more error(s): `harness measurements check {measurement_dir}`)"
    return InvalidEntry(entry, first.location, first.message + (extra if more else ""))


write_json = fileio.write_json  # the key's files are written atomically
