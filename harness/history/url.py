"""Where the history database is: a SQLite file by default, or a PostgreSQL URL for a fleet.

`reports/history.sqlite` needs nothing set up. `postgresql://user@host/db` (the ini key
`harness_history_db` or `--history-db`) is served with psycopg 3. Anything else is refused with
the accepted forms, before a run starts.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from harness.errors import HarnessError

DEFAULT_FILE = "history.sqlite"
ACCEPTED = (
    "a SQLite file path (reports/history.sqlite), sqlite:///PATH, or "
    "postgresql://USER[:PASSWORD]@HOST[:PORT]/DB"
)


class HistoryError(HarnessError):
    """The history database cannot be used; names the URL (password hidden) and what to do."""


def default_url(results_dir: Path) -> str:
    return f"sqlite:///{(results_dir / DEFAULT_FILE).as_posix()}"


def parse_url(text: str) -> URL:
    """A checked SQLAlchemy URL; a bare path means a SQLite file. Connects to nothing."""
    text = text.strip()
    if not text:
        raise HistoryError(f"empty history database URL: give {ACCEPTED}")
    if "://" not in text:
        return make_url(f"sqlite:///{Path(text).as_posix()}")
    try:
        url = make_url(text)
    except ArgumentError:
        raise HistoryError(f"{text!r} is not a database URL: give {ACCEPTED}") from None
    backend = url.get_backend_name()
    if backend == "sqlite":
        if not url.database or url.database == ":memory:":
            raise HistoryError(
                f"{text!r}: a history database must be a file (sqlite:///reports/history.sqlite)"
            )
        return url
    if backend == "postgresql":
        if "+" not in url.drivername:  # plain postgresql:// means psycopg 3
            url = url.set(drivername="postgresql+psycopg")
        if not url.database:
            raise HistoryError(f"{safe(url)}: no database name (postgresql://USER@HOST/DB)")
        return url
    raise HistoryError(f"{text!r}: unsupported database {backend!r}: give {ACCEPTED}")


def safe(url: URL | str) -> str:
    """The URL as shown to people: the password hidden."""
    if isinstance(url, str):
        try:
            url = make_url(url)
        except ArgumentError:
            return str(url)
    return str(url.render_as_string(hide_password=True))


def require_existing(url: str, what_to_do: str) -> None:
    """Reading must not create an empty SQLite file where the user mistyped a path."""
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite" and not Path(str(parsed.database)).is_file():
        raise HistoryError(f"{parsed.database}: no history database here; {what_to_do}")


def create_engine(url: URL, timeout_s: float = 5.0) -> sa.Engine:
    """An engine that gives up after `timeout_s` on a locked file or a silent server."""
    if url.get_backend_name() == "sqlite":
        assert url.database is not None
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        from harness.history.sqlite import sqlite_engine

        return sqlite_engine(url, timeout_s)
    try:
        return sa.create_engine(
            url, connect_args={"connect_timeout": max(1, round(timeout_s))}, pool_pre_ping=True
        )
    except ImportError:
        raise HistoryError(
            f"{safe(url)}: the PostgreSQL driver is missing: pip install 'psycopg[binary]'"
        ) from None
