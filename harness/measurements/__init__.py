"""INC measurement sets: read/write, unify, expand, postprocess, check, diff (pure data, no torch).

The library the calibration stage calls::

    from harness import measurements as m

    m.unify("g2-ep16/", "g2-tp1/", ranks=1, expert_parallel=True, skip_scales=True)
    m.expand("g2-tp1/", "g2-ep32/", world=32)
    report = m.check("g2-ep32/", device="g2", world=32)
    assert report.ok, report.render()

Errors in the input raise :class:`harness.errors.MeasurementError` naming the file and problem.
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
    "unify",
]
