"""What the HTML report reads out of a run's records and artifacts, without any HTML.

Every reader here tolerates a missing or broken file: it returns None or an empty list and the
page shows "missing" in place of the figure, so one lost artifact never costs the report.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.results import StageResult

LOG_LINES = 30
_CONCURRENCY = re.compile(r"^(?P<name>.+)@c(?P<c>\d+)$")
_SIZED = re.compile(r"^(?P<name>.+)@(?P<size>\d+[gmkb])$")
_UNITS = {"g": 1024**3, "m": 1024**2, "k": 1024, "b": 1}
# gate dict keys shown in their own columns; any other key is shown as `key=value`
GATE_KEYS = ("metric", "value", "bound", "passed", "status", "message")
INTERVAL_KEYS = ("interval", "ci", "ci95", "confidence_interval")


def sanitize(results: list[StageResult]) -> tuple[list[StageResult], list[str]]:
    """Records fit to render, and one line per field that was not (a hand-edited or foreign
    results.jsonl): a wrong field is emptied and named on the page, never a traceback."""
    out, problems = [], []
    for i, r in enumerate(results):
        bad = [name for name, kind in (("cell", str), ("stage", str), ("status", str),
                                       ("message", str), ("metrics", dict), ("gates", list),
                                       ("artifacts", dict), ("duration_s", int | float))
               if not isinstance(getattr(r, name), kind)]
        gates = r.gates if isinstance(r.gates, list) else []
        if any(not isinstance(g, dict) for g in gates):
            bad.append("gates")
        arts = r.artifacts if isinstance(r.artifacts, dict) else {}
        if any(not isinstance(v, str) for v in arts.values()):
            bad.append("artifacts")
        if not bad:
            out.append(r)
            continue
        problems.append(f"record {i + 1} ({r.cell!s} [{r.stage!s}]): malformed "
                        f"{', '.join(dict.fromkeys(bad))}")
        out.append(StageResult(
            str(r.cell), str(r.stage), r.status if isinstance(r.status, str) else "failed",
            r.message if isinstance(r.message, str) else str(r.message),
            r.metrics if isinstance(r.metrics, dict) else {},
            [g for g in gates if isinstance(g, dict)],
            {k: v for k, v in arts.items() if isinstance(v, str)},
            str(r.started), r.duration_s if isinstance(r.duration_s, int | float) else 0.0,
        ))
    return out, problems


def stage_dir(cell: str, stage: str) -> str:
    """Where a stage's artifacts live, relative to the run directory (as RunStore lays out)."""
    return f"cells/{cell.replace('/', '__')}/{stage}"


def gate_status(gate: Mapping[str, Any], cell: str) -> str:
    """passed | failed | unknown | n/a: an explicit `status` wins; an unevaluated comparison
    with BF16 is the baseline's n/a or an unknown, never a pass."""
    status = gate.get("status")
    if isinstance(status, str) and status:
        return status.lower()
    if gate.get("bound") == "vs bf16":
        return "n/a" if "/bf16-" in cell else "unknown"
    return "passed" if gate.get("passed") else "failed"


def gate_interval(gate: Mapping[str, Any]) -> str:
    """The interval of a gate's value when the record carries one, in any of its spellings."""
    for key in INTERVAL_KEYS:
        value = gate.get(key)
        if isinstance(value, list | tuple) and len(value) == 2:
            return f"[{_num(value[0])}, {_num(value[1])}]"
        if isinstance(value, Mapping) and {"low", "high"} <= set(value):
            return f"[{_num(value['low'])}, {_num(value['high'])}]"
    low, high = gate.get("lower"), gate.get("upper")
    if low is not None and high is not None:
        return f"[{_num(low)}, {_num(high)}]"
    return ""


def gate_extras(gate: Mapping[str, Any]) -> str:
    skip = set(GATE_KEYS) | set(INTERVAL_KEYS) | {"lower", "upper"}
    return "; ".join(f"{k}={_num(v)}" for k, v in gate.items() if k not in skip)


def _num(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def hint_of(result: StageResult) -> str:
    """The fix hint: a record's own `hint` field, else the `hint:` lines of its message."""
    own = getattr(result, "hint", "")
    if isinstance(own, str) and own:
        return own
    hints = [ln.strip()[len("hint:"):].strip() for ln in result.message.splitlines()
             if ln.strip().startswith("hint:")]
    return " | ".join(h for h in hints if h)


def reason_of(result: StageResult) -> str:
    """The message without its hint lines (they are shown apart)."""
    return "\n".join(ln for ln in result.message.splitlines()
                     if not ln.strip().startswith("hint:")).strip()


@dataclass(frozen=True)
class Artifact:
    name: str
    path: str  # relative to the run directory when it is inside it
    exists: bool


def artifacts(run_dir: Path, result: StageResult) -> list[Artifact]:
    out = []
    for name, path in sorted(result.artifacts.items()):
        full = Path(path) if Path(path).is_absolute() else run_dir / path
        out.append(Artifact(name, path, full.exists()))
    return out


def log_tail(run_dir: Path, result: StageResult, lines: int = LOG_LINES) -> tuple[str, str] | None:
    """(path, last lines) of the log that explains a failure: a log the message names, else
    the stage's log artifacts, else any *.log in the stage's directory (a server that failed
    to start records no artifacts)."""
    candidates = [p for n, p in result.artifacts.items() if "log" in n or p.endswith(".log")]
    named = [p for p in candidates if Path(p).name in result.message]
    folder = run_dir / stage_dir(result.cell, result.stage)
    found = sorted(folder.rglob("*.log"), key=lambda p: p.stat().st_mtime) if folder.is_dir() \
        else []
    ordered = named + candidates + [str(p.relative_to(run_dir)) for p in reversed(found)]
    for rel in dict.fromkeys(ordered):
        full = Path(rel) if Path(rel).is_absolute() else run_dir / rel
        text = _tail(full, lines)
        if text is not None:
            return rel, text
    return None


def _tail(path: Path, lines: int) -> str | None:
    try:
        with path.open("rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - 64_000))
            data = fh.read().decode("utf-8", "replace")
    except OSError:
        return None
    return "\n".join(data.splitlines()[-lines:])


def by_concurrency(metrics: Mapping[str, Any]) -> dict[str, dict[int, float]]:
    """`output_throughput@c32` -> {"output_throughput": {32: value}} for numeric figures."""
    out: dict[str, dict[int, float]] = {}
    for key, value in metrics.items():
        m = _CONCURRENCY.match(key)
        if m and isinstance(value, int | float) and not isinstance(value, bool):
            out.setdefault(m["name"], {})[int(m["c"])] = float(value)
    return out


def by_size(metrics: Mapping[str, Any]) -> dict[str, dict[int, float]]:
    """`busbw_gbps@32m` -> {"busbw_gbps": {33554432: value}}."""
    out: dict[str, dict[int, float]] = {}
    for key, value in metrics.items():
        m = _SIZED.match(key)
        if m and isinstance(value, int | float) and not isinstance(value, bool):
            size = m["size"]
            out.setdefault(m["name"], {})[int(size[:-1]) * _UNITS[size[-1]]] = float(value)
    return out


def bandwidth_rows(run_dir: Path, result: StageResult) -> list[dict[str, Any]]:
    """Rows of the stage's bandwidth.json (every size, slowest rank); [] when absent."""
    path = result.artifacts.get("bandwidth")
    data = _json(run_dir / path) if path else None
    if not isinstance(data, list):
        return []
    return [r for r in data if isinstance(r, dict) and "size_bytes" in r]


@dataclass(frozen=True)
class PerRequest:
    """Per-request figures of one benchmark run, in milliseconds."""

    concurrency: int
    ttft_ms: list[float]
    tpot_ms: list[float]
    e2el_ms: list[float]
    errors: int


def per_request(run_dir: Path, result: StageResult) -> dict[int, PerRequest | None]:
    """By concurrency: the per-request figures of `--save-detailed` results, or None when the
    result file holds only aggregates (or is missing)."""
    out: dict[int, PerRequest | None] = {}
    for name, path in result.artifacts.items():
        m = re.fullmatch(r"bench@c(\d+)", name)
        if not m:
            continue
        data = _json(run_dir / path)
        out[int(m[1])] = _requests(int(m[1]), data) if isinstance(data, dict) else None
    return dict(sorted(out.items()))


def _requests(concurrency: int, data: Mapping[str, Any]) -> PerRequest | None:
    ttfts, lats, outs = data.get("ttfts"), data.get("latencies"), data.get("output_lens")
    if not isinstance(ttfts, list) or not ttfts:
        return None
    errors = sum(1 for e in data.get("errors") or [] if e)
    ttft = [float(t) * 1000 for t in ttfts if isinstance(t, int | float) and t > 0]
    tpot: list[float] = []
    e2el: list[float] = []
    itls = data.get("itls")
    if isinstance(lats, list) and isinstance(outs, list):
        for t, lat, n in zip(ttfts, lats, outs, strict=False):
            if not all(isinstance(v, int | float) for v in (t, lat, n)) or lat <= 0:
                continue
            e2el.append(float(lat) * 1000)
            if n > 1:  # vLLM's definition: the time after the first token per further token
                tpot.append((float(lat) - float(t)) / (n - 1) * 1000)
    elif isinstance(itls, list) and isinstance(outs, list):  # the fork's benchmark_serving.py
        for gaps, n in zip(itls, outs, strict=False):
            if isinstance(gaps, list) and isinstance(n, int) and n > 1 and gaps:
                tpot.append(sum(float(g) for g in gaps) / (n - 1) * 1000)
    return PerRequest(concurrency, ttft, tpot, e2el, errors)


def calibration_findings(run_dir: Path, result: StageResult) -> list[dict[str, Any]] | None:
    """The measurement check's findings from calibration.json; None when it is missing."""
    path = result.artifacts.get("calibration")
    data = _json(run_dir / path) if path else None
    if not isinstance(data, dict):
        return None
    check = data.get("check")
    findings = check.get("findings", []) if isinstance(check, dict) else []
    return [f for f in findings if isinstance(f, dict)]


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
