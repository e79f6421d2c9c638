"""What a stage's JUnit test case carries, so a Jenkins or GitLab page is enough to triage:
the failure message holds the reason, the fix hint and the last lines of the relevant log; the
properties hold the report links, the artifacts and the gates.

The plugin calls `junit_case(result, run_dir, base_url)` once the stage is recorded and puts
the properties on `item.user_properties` and, for a failure, the message into
`report.longrepr` (junitxml writes a string longrepr as the failure's message and text).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.report import facts
from harness.results import StageResult

LOG_LINES = 20
REPORTS = ("report.html", "report.md", "summary.md", "results.jsonl")


@dataclass(frozen=True)
class JunitCase:
    """The failure text (empty when the stage passed) and the (name, value) properties."""

    message: str
    properties: list[tuple[str, str]]


def _where(rel: str, run_dir: Path, base_url: str | None) -> str:
    """A link CI can open: under the artifact store's URL when given, else the local path."""
    if Path(rel).is_absolute():
        return rel
    if base_url:
        return base_url.rstrip("/") + "/" + rel
    return str(run_dir / rel)


def failure_message(result: StageResult, run_dir: Path, lines: int = LOG_LINES) -> str:
    """Reason, hint and log tail as one text; '' for a passed or skipped stage."""
    if result.status != "failed":
        return ""
    parts = [facts.reason_of(result) or f"{result.cell} [{result.stage}] failed"]
    hint = facts.hint_of(result)
    if hint:
        parts.append(f"fix: {hint}")
    tail = facts.log_tail(run_dir, result, lines)
    if tail is not None and tail[1].strip():
        parts.append(f"--- last {lines} lines of {tail[0]} ---\n{tail[1]}")
    return "\n".join(parts)


def junit_case(result: StageResult, run_dir: Path, base_url: str | None = None) -> JunitCase:
    """Message and properties of one stage's test case; `base_url` is where CI publishes the
    run directory (e.g. Jenkins' `${BUILD_URL}artifact/reports/<run>`), else local paths."""
    # the plugin already puts ("cell", id) and the metrics on the case: not repeated here
    props = [("stage", result.stage), ("status", result.status)]
    props += [(f"report.{name}", _where(name, run_dir, base_url)) for name in REPORTS]
    hint = facts.hint_of(result)
    if hint:
        props.append(("hint", hint))
    if result.status == "failed":
        tail = facts.log_tail(run_dir, result, 0)
        if tail is not None:
            props.append(("log", _where(tail[0], run_dir, base_url)))
    for name, path in sorted(result.artifacts.items()):
        props.append((f"artifact.{name}", _where(path, run_dir, base_url)))
    for gate in result.gates:
        status = facts.gate_status(gate, result.cell)
        interval = facts.gate_interval(gate)
        value = f"{gate.get('value')} {gate.get('bound', '')} {status}"
        props.append((f"gate.{gate.get('metric', '?')}", value + (f" {interval}" if interval
                                                                  else "")))
    return JunitCase(failure_message(result, run_dir), props)
