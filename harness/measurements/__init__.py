"""INC measurement sets: read/write, unify, expand, postprocess, check, diff (pure data, no torch).

The library the calibration stage calls::

    from harness import measurements as m

    m.unify("g2-ep16/", "g2-tp1/", ranks=1, expert_parallel=True, skip_scales=True)
    m.expand("g2-tp1/", "g2-ep32/", world=32)
    report = m.check("g2-ep32/", device="g2", world=32)
    assert report.ok, report.render()

Bad input raises :class:`harness.errors.MeasurementError` naming the file and the problem.
Outputs are written atomically (old files or the complete new set, never a part).

Same values as the public vLLM-Gaudi scripts (step-3/5/6), with these deliberate differences:

* Scale files: per-channel entries take the element-wise max; the public step-5 takes Python's
  ``max()`` of whole lists, a lexicographic max (equal when an entry holds one value).
* unify and expand also write the module lists of their outputs; ``GlobalRank`` is null.
* JSON is written one node per line (the public scripts indent by four); NPZ files hold float32
  arrays, as INC writes them (the public scripts write the float64 arrays of their JSON).
* postprocess finds attention blocks by name, so it also fixes current vLLM-Gaudi DeepSeek
  (``self_attn.mla_attn.impl``) and gpt-oss (``attn.attn.impl``) sets, on which the public script
  silently changes nothing; it never writes null where a cache is missing.
* expand checks every MoE op (experts divisible by N, as many amax as experts) and refuses
  expanded or never-unified sets; unify refuses ranks whose nodes or shapes differ (the public
  script ignores extra nodes and fails with a KeyError on missing ones).
* ``-o`` is required (the scripts default to the current directory); ``-o`` equal to ``-m`` is safe.
* A rank without its JSON is read from its NPZ; NPZ files are unpickled with only numpy's array
  and dtype constructors allowed.
"""

from harness.errors import MeasurementError
from harness.measurements.check import CheckReport
from harness.measurements.check import Finding
from harness.measurements.check import Severity
from harness.measurements.check import check
from harness.measurements.diff import DiffReport
from harness.measurements.diff import ValueDiff
from harness.measurements.diff import diff
from harness.measurements.expand import expand
from harness.measurements.model import MeasurementFile
from harness.measurements.model import MeasurementSet
from harness.measurements.model import load_set
from harness.measurements.model import read_file
from harness.measurements.naming import Kind
from harness.measurements.outcome import Outcome
from harness.measurements.postprocess import postprocess
from harness.measurements.unify import unify
from harness.measurements.writer import save_set

__all__ = [
    "CheckReport",
    "DiffReport",
    "Finding",
    "Kind",
    "MeasurementError",
    "MeasurementFile",
    "MeasurementSet",
    "Outcome",
    "Severity",
    "ValueDiff",
    "check",
    "diff",
    "expand",
    "load_set",
    "postprocess",
    "read_file",
    "save_set",
    "unify",
]
