"""The lines of a crashed server's log that say why, for the failure message (issue 16).

The last 25 lines of a vLLM log after a crash are mostly the API server's shutdown noise or the
tail of a 40-frame traceback; the cause (`NotImplementedError: FP8 KV cache on CPU requires
...`, `Worker proc ... died unexpectedly (exit code: -11)`, `Killed`) is often hundreds of
lines above. `root_cause(text)` picks those lines: exception lines, the final frame of the last
traceback, vLLM's fatal lines and ERROR lines that are not traceback bodies; without their
timestamps, deduplicated, at most `limit`, in log order. Pure: tested on real vLLM logs.
"""

from __future__ import annotations

import re
from pathlib import Path

LIMIT = 8
WIDTH = 300  # vLLM's ERROR lines can dump a whole engine config on one line

# "(EngineCore pid=12) ERROR 11-23 16:52:46 [core.py:1512] text" -> tag "(EngineCore pid=12)"
_VLLM = re.compile(
    r"^(?P<tag>\([\w:.-]+ pid=\d+\)\s+)?"
    r"(?:(?P<level>DEBUG|INFO|WARNING|ERROR|CRITICAL)\s+\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?\s+"
    r"\[[^\]]*\]\s?)?(?P<text>.*)$"
)
_EXCEPTION = re.compile(
    r"^(?:[a-z_][\w]*\.)*(?:[A-Z]\w*(?:Error|Exception|Exit|Interrupt|Failure)|"
    r"EngineDeadError|KeyError|StopIteration)(?::\s.*|:?$)"
)
_FATAL = re.compile(
    r"Engine core initialization failed|EngineCore failed|encountered a fatal error|"
    r"died unexpectedly|exited unexpectedly|Parent process exited|Segfault encountered|"
    r"Fatal Python error|^Killed\b|\bOOM\b|"
    r"[Oo]ut of memory|Cannot allocate memory|Allocation failed|Address already in use|"
    r"core dumped"
)
_FRAME = re.compile(r'^\s*File "[^"]+", line \d+, in \S+')
_NOISE = re.compile(r"^(?:Traceback \(most recent call last\)|\s|\^|~|$)|Dumping (?:input|"
                    r"scheduler)|^The above exception|^During handling of the above")


def _parts(line: str) -> tuple[str, str | None, str]:
    """(process tag, level, message) of one log line."""
    m = _VLLM.match(line.rstrip("\n"))
    if m is None:  # pragma: no cover - the pattern matches any line
        return "", None, line
    return (m.group("tag") or "").strip(), m.group("level"), m.group("text")


def root_cause(text: str, limit: int = LIMIT) -> list[str]:
    """The cause lines of a log, most telling first when there are more than `limit`, shown
    in log order; [] when nothing looks like an error."""
    found: dict[str, tuple[int, int, str]] = {}  # message -> (rank, position, shown line)
    last_frame: tuple[int, str] | None = None
    last_exception = ("", -1)
    for i, line in enumerate(text.splitlines()):
        if i == 0 and line.startswith("$ "):  # the harness writes the command first
            continue
        tag, level, msg = _parts(line)
        body = msg.strip()
        if _FRAME.match(msg):
            last_frame = (i, f"{tag} {body}".strip())
            continue
        if _NOISE.search(msg):
            continue
        if _EXCEPTION.match(body):
            rank = 0
            last_exception = (body, i)
        elif _FATAL.search(body):
            rank = 1
        elif level in ("ERROR", "CRITICAL"):
            rank = 3
        else:
            continue
        # one line per message: the same error logged by several processes, or again by the
        # API server's own traceback, is shown once (where it first appeared)
        if body not in found or rank < found[body][0]:
            found[body] = (rank, i, _short(f"{tag} {body}".strip()))
    body, at = last_exception
    if last_frame is not None and last_frame[0] < at and found[body][1] == at:
        # where the last exception was raised: the final frame of its traceback
        found.setdefault(last_frame[1], (2, last_frame[0], _short(last_frame[1])))
    kept = sorted(found.values())[:limit]
    return [shown for _, _, shown in sorted(kept, key=lambda k: k[1])]


def _short(line: str) -> str:
    return line if len(line) <= WIDTH else line[: WIDTH - 3] + "..."


def root_cause_of(path: Path, limit: int = LIMIT) -> list[str]:
    """`root_cause` of a log file; [] when it cannot be read."""
    try:
        return root_cause(path.read_text(encoding="utf-8", errors="replace"), limit)
    except OSError:
        return []
