"""A run's context as history keeps it, and the rule for comparing like with like.

The session writes the context as the first line of results.jsonl (matrix and hash, commit,
stack `versions`, `inventory`, `host`). A `host_fingerprint` object in it (see
:func:`local_fingerprint`) names the device, driver, firmware and host class; older runs
without one get a host class derived from backend and inventory, which is stable on one box.
Two runs compare only when host class, device and stack key match: a cpu rehearsal never
becomes the baseline of a Gaudi run.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from typing import Any


def stack_key(versions: Mapping[str, Any]) -> str:
    """A short stable key of the stack versions: baselines come from the same key only."""
    text = json.dumps({k: versions[k] for k in sorted(versions)}, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown-cpu"


def local_fingerprint(
    backend: str, device: str, driver: str = "", firmware: str = "", host_class: str = ""
) -> dict[str, str]:
    """The `host_fingerprint` a session adds to its context line.

    Host class: what makes figures comparable across hosts of a fleet: backend, device,
    machine, CPU model and core count (a Gaudi backend passes driver and firmware from hl-smi).
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    host_class = host_class or f"{backend}/{device}/{platform.machine()}/{_cpu_model()}/{cores}c"
    return {"host_class": host_class, "device": device, "driver": driver, "firmware": firmware}


@dataclass(frozen=True)
class RunContext:
    """What a stored run says about where and with what it ran."""

    run_id: str
    started: str = ""
    matrix: str = ""
    matrix_name: str = ""
    matrix_sha256: str = ""
    commit: str = ""
    backend: str = ""
    harness_version: str = ""
    host: str = ""
    host_class: str = ""
    device: str = ""
    driver: str = ""
    firmware: str = ""
    versions: Mapping[str, Any] = field(default_factory=dict)

    @property
    def stack_key(self) -> str:
        return stack_key(self.versions)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> RunContext:
        """From a results.jsonl run line (missing keys become empty)."""
        fp = record.get("host_fingerprint")
        fp = fp if isinstance(fp, Mapping) else {}
        versions = record.get("versions")
        backend = str(record.get("backend") or "")
        device = str(fp.get("device") or ("cpu" if backend == "cpu" else ""))
        host_class = str(fp.get("host_class") or "")
        if not host_class:
            host_class = f"{backend}/{device}/{record.get('inventory') or record.get('host', '')}"
        return cls(
            run_id=str(record.get("run_id") or ""),
            started=str(record.get("started") or ""),
            matrix=str(record.get("matrix") or ""),
            matrix_name=str(record.get("matrix_name") or ""),
            matrix_sha256=str(record.get("matrix_sha256") or ""),
            commit=str(record.get("commit") or ""),
            backend=backend,
            harness_version=str(record.get("harness_version") or ""),
            host=str(record.get("host") or ""),
            host_class=host_class,
            device=device,
            driver=str(fp.get("driver") or ""),
            firmware=str(fp.get("firmware") or ""),
            versions=dict(versions) if isinstance(versions, Mapping) else {},
        )

    def comparable(self, other: RunContext) -> bool:
        return (self.host_class, self.device, self.stack_key) == (
            other.host_class,
            other.device,
            other.stack_key,
        )


def differences(a: RunContext, b: RunContext) -> list[str]:
    """What differs between two runs' host and stack, e.g. `vllm 0.31.0 -> 0.32.0`."""
    out = []
    for name in ("host_class", "device", "driver", "firmware"):
        if getattr(a, name) != getattr(b, name):
            out.append(f"{name} {getattr(a, name) or '?'} -> {getattr(b, name) or '?'}")
    for pkg in sorted(set(a.versions) | set(b.versions)):
        old, new = a.versions.get(pkg), b.versions.get(pkg)
        if old != new:
            out.append(f"{pkg} {old or 'absent'} -> {new or 'absent'}")
    return out
