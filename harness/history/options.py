"""The history option, declared once for the plugin: `--history-db URL` / ini `harness_history_db`.

Wiring (harness/plugin.py `pytest_addoption`): `add_history_option(group.addoption)` and
`parser.addini(*HISTORY_INI)`; in `RunOptions.from_config`:
`history_url = resolve_history_url(cli, ini, results_dir)`, raising pytest.UsageError from the
HistoryError it may raise. `none` (or `off`) turns the history off for a run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.history.url import default_url
from harness.history.url import parse_url
from harness.history.url import safe

HISTORY_INI = (
    "harness_history_db",
    "History database URL (SQLite path or postgresql://...); none: off",
    "string",
    "",
)
OFF = ("none", "off")


def add_history_option(addoption: Callable[..., Any]) -> None:
    addoption(
        "--history-db",
        dest="harness_history_db",
        metavar="URL",
        default=None,
        help="History database every stage result also goes to: a SQLite path or "
        "postgresql://USER@HOST/DB; 'none' turns it off. Default: <results-dir>/history.sqlite",
    )


def resolve_history_url(cli: str | None, ini: str | None, results_dir: Path) -> str | None:
    """CLI, then ini, then `<results_dir>/history.sqlite`; None when turned off.

    Raises HistoryError for a malformed URL (checked here, before anything runs; nothing is
    connected to)."""
    text = (cli or ini or "").strip()
    if text.lower() in OFF:
        return None
    if not text:
        return default_url(results_dir)
    parse_url(text)
    return text


def describe(url: str | None) -> str:
    """For the report header: where results also go."""
    return "history: off" if url is None else f"history: {safe(url)}"
