"""``python -m harness.measurements unify|expand|postprocess|check|diff ...``."""

import sys

from harness.measurements.cli import main

sys.exit(main())
