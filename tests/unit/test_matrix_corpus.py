"""The malformed-matrix corpus (tests/data/matrices/bad/, issue 16): every file is refused at
load with one line naming the file and the key, worded as its first line says
(`# expect: <regex>`). Helper files of `extends` cases live in bad/_parts/ and are not cases.

A new bad input is one new file: no table to edit, and the CLI check below picks it up.
"""

from __future__ import annotations

import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from harness.errors import MatrixError
from harness.matrix import load_matrix

ROOT = Path(__file__).resolve().parents[2]
BAD = ROOT / "tests" / "data" / "matrices" / "bad"
CASES = sorted(BAD.glob("*.yaml"))
HEADER = b"# expect: "


def expected(case: Path) -> str:
    """The regex of a case's first line (read as bytes: the non-UTF-8 case must stay so)."""
    first = case.read_bytes().split(b"\n", 1)[0]
    assert first.startswith(HEADER), f"{case.name}: the first line must be '# expect: <regex>'"
    return first[len(HEADER):].decode("ascii").strip()


def refusal(case: Path) -> MatrixError:
    with pytest.raises(MatrixError) as info:
        load_matrix(case)
    return info.value


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_a_bad_matrix_is_refused_with_one_line_naming_file_and_key(case: Path) -> None:
    error = refusal(case)
    message = str(error)
    assert re.search(expected(case), message), message
    named = Path(error.path).resolve()
    # the file itself, or the part it extends when that part is what is broken
    assert named == case.resolve() or named.parent == (BAD / "_parts").resolve(), message
    assert message.startswith(f"{error.path}: {error.key + ': ' if error.key else ''}")
    assert "\n" not in message and "Traceback" not in message


def test_the_corpus_holds_at_least_sixty_distinct_bad_inputs() -> None:
    assert len(CASES) >= 60
    assert len({expected(c) for c in CASES}) > 0.9 * len(CASES)  # not one message copied


# the former tracebacks (issue 16), a file-level error, a pydantic error, a cell-level error,
# an extends chain, and a check that ran only at --plan: through the real command line
CLI_SAMPLE = ("include-tp-word", "include-tp-zero", "non-utf8", "collectives-size-invalid",
              "empty-file", "settings-wrong-type", "tp-beyond-one-node", "extends-cycle",
              "stages-empty", "override-matches-no-cell")


def _plan(case: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "suites", "--matrix", str(case), "--plan", "-q",
         "-p", "no:cacheprovider"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )


def test_pytest_plan_refuses_a_sample_as_a_usage_error_without_a_traceback() -> None:
    cases = [BAD / f"{name}.yaml" for name in CLI_SAMPLE]
    with ThreadPoolExecutor(max_workers=2) as pool:  # ~3 s each; the box has 2 cores
        done = list(pool.map(_plan, cases))
    for case, run in zip(cases, done, strict=True):
        out = (run.stdout + run.stderr).strip()
        assert run.returncode == 4, (case.name, out)  # pytest's usage error
        assert "Traceback" not in out, (case.name, out)
        (line,) = out.splitlines()  # one line, nothing planned
        assert line.startswith("ERROR: ") and re.search(expected(case), line), (case.name, line)
