"""In-repo runs: load the harness plugin even when the package is not pip-installed.

The `pytest11` entry point has the same name ("harness.plugin"), so an installed harness
is not registered twice.
"""

pytest_plugins = ["harness.plugin"]
