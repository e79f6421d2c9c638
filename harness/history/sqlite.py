"""SQLite engines whose transactions are real: BEGIN IMMEDIATE around DDL and writes alike.

Python's sqlite3 module starts transactions only before DML, so a migration's DDL would commit
statement by statement; SQLAlchemy's documented fix is to turn the driver's handling off and emit
BEGIN ourselves. IMMEDIATE takes the write lock up front, so two writers queue (up to the busy
timeout) instead of failing half-way. Foreign keys are on, as on PostgreSQL.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL


def sqlite_engine(url: URL, timeout_s: float) -> sa.Engine:
    engine = sa.create_engine(url, connect_args={"timeout": timeout_s})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: sa.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
