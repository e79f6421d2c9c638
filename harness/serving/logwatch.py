"""Read a server log as it grows: readiness marks seen, and the first known fatal line.

A vLLM server that cannot come up often keeps its API process alive for a while (or forever)
after the engine died; waiting for /health until the timeout wastes up to hours on Gaudi. The
log says what happened long before: these patterns fail the start at once, with a hint.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

PT_DEVMEM_HINT = (
    "the device ran out of memory loading the model: set a valid tensor parallelism so the "
    "weights fit (e.g. --tensor-parallel-size 8; seed 001: 'ensure you set a valid tensor "
    "parallelism value, e.g. -t 8'), lower max_model_len/max_num_seqs, or load weights on the "
    "host with --weights-load-device cpu"
)


@dataclass(frozen=True)
class FailurePattern:
    """A log line that means the server will not serve, with what to do about it."""

    regex: str
    reason: str
    hint: str

    def search(self, text: str) -> re.Match[str] | None:
        return re.search(self.regex, text)


# Order matters: the most specific cause first (an allocation failure also kills the engine).
FAILURE_PATTERNS: tuple[FailurePattern, ...] = (
    FailurePattern(
        r"PT_DEVMEM Allocation failed[^\n]*",
        "device memory allocation failed",
        PT_DEVMEM_HINT,
    ),
    FailurePattern(
        r"(?:torch\.OutOfMemoryError|OutOfMemoryError|CUDA out of memory|"
        r"Allocation failed for size|Cannot allocate memory|MemoryError)[^\n]*",
        "memory allocation failed",
        "the model, its KV cache or the batch do not fit: lower max_model_len/max_num_seqs or "
        "the KV cache size, or raise tensor parallelism",
    ),
    FailurePattern(
        r"(?:Address already in use|\[Errno 98\])[^\n]*",
        "the server's port is already in use",
        "another process holds the port: stop it or let the harness pick a free port "
        "(leave serving.port unset)",
    ),
    FailurePattern(
        r"FP8 KV cache on CPU requires[^\n]*",
        "this vLLM CPU build cannot keep an FP8 KV cache on this host",
        "the cpu backend emulates an FP8 KV cache on hosts without AVX-512; do not pass "
        "--kv-cache-dtype fp8 through serving.extra_args here",
    ),
    FailurePattern(
        r"QUANT_CONFIG=[^\n]* is not a file[^\n]*",
        "QUANT_CONFIG does not point at a file",
        "run the calibration stage for this cell (or fix the path it produced)",
    ),
    FailurePattern(
        r"!+ Segfault encountered !+|Fatal Python error: [^\n]*",
        "a vLLM process crashed",
        "the native stack follows this line in the log; on CPU check the build matches the "
        "host's ISA (AVX2 vs AVX-512)",
    ),
    FailurePattern(
        r"EngineDeadError[^\n]*",
        "the vLLM engine died",
        "read the log tail above for the engine's own error",
    ),
    FailurePattern(
        r"Engine core initialization failed[^\n]*",
        "the vLLM engine failed to initialise",
        "the root cause is logged above this line (see the log tail)",
    ),
    FailurePattern(
        r"RuntimeError: Worker failed with error[^\n]*",
        "a vLLM worker failed",
        "read the worker's stack trace in the log",
    ),
)


@dataclass(frozen=True)
class Failure:
    """The fatal line found in a log and the pattern it matched."""

    line: str
    pattern: FailurePattern


class LogWatch:
    """Incremental reader of one log file (complete lines only; handles a growing file)."""

    def __init__(
        self,
        path: Path,
        ready_marks: tuple[str, ...] = (),
        failures: tuple[FailurePattern, ...] = FAILURE_PATTERNS,
    ) -> None:
        self.path = path
        self.ready_marks = ready_marks
        self.failures = failures
        self.seen: set[str] = set()
        self.failure: Failure | None = None
        self._offset = 0
        self._partial = ""

    @property
    def missing_marks(self) -> tuple[str, ...]:
        return tuple(m for m in self.ready_marks if m not in self.seen)

    def poll(self) -> Failure | None:
        """Read what was appended; record marks; return the first failure (sticky)."""
        try:
            with self.path.open("rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except OSError:
            return self.failure
        if not data:
            return self.failure
        self._offset += len(data)
        text = self._partial + data.decode("utf-8", "replace")
        text, _, self._partial = text.rpartition("\n")
        self.scan(text)
        return self.failure

    def scan(self, text: str) -> Failure | None:
        """Record marks and the first failure in `text` (complete lines)."""
        for mark in self.ready_marks:
            if mark not in self.seen and mark in text:
                self.seen.add(mark)
        if self.failure is None:
            for pattern in self.failures:
                match = pattern.search(text)
                if match:
                    self.failure = Failure(match.group(0).strip(), pattern)
                    break
        return self.failure
