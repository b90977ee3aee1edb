"""The dashboard's history in the SQLite result backend's file: one table beside its own.

``chard_dashboard_tasks(uuid PRIMARY KEY, changed, record, ...)`` with the columns and
indexes of :mod:`.history_sql`, filled from the record on write by ``json_extract``.
A table written before those columns existed gets them, filled from the records,
when it is first opened (:func:`_migrate`). Measured with 100,000 tasks: README,
"Dashboard".
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from chard._sqlite import FORK_GATE, parse_sqlite_url
from chard.dashboard.history import Record
from chard.dashboard.history_sql import COLUMNS, INDEXES, Row, SQLHistory
from chard.exceptions import BackendConnectionError, ImproperlyConfigured

#: Seconds a statement waits for another process's write lock, as the backend does.
BUSY_TIMEOUT = 30.0
TABLE = "chard_dashboard_tasks"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chard_dashboard_tasks (
    uuid TEXT PRIMARY KEY, changed REAL NOT NULL, record TEXT NOT NULL
);
DROP INDEX IF EXISTS chard_dashboard_tasks_changed;
DROP INDEX IF EXISTS chard_dashboard_tasks_state;
"""
_EXTRACTED = ", ".join(f"json_extract(?3, '{path}')" for path in COLUMNS.values())
_SAVE = (
    f"INSERT OR REPLACE INTO {TABLE} (uuid, changed, record, {', '.join(COLUMNS)}) "
    f"VALUES (?1, ?2, ?3, {_EXTRACTED})"
)


class SQLiteHistory(SQLHistory):
    """Task records in a SQLite file (WAL), shared by the dashboards of one machine."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.path = parse_sqlite_url(url)
        self._lock = threading.Lock()
        try:
            self._open()
        except sqlite3.Error as exc:
            raise ImproperlyConfigured(
                f"cannot open the dashboard history in {str(self.path)!r}: {exc}; "
                "check that the result backend's file is writable"
            ) from exc

    def _open(self) -> None:
        with FORK_GATE:
            self._conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
            self._conn.execute("PRAGMA journal_mode = WAL").fetchall()
            self._conn.executescript(_SCHEMA)
            _migrate(self._conn)
            for index in INDEXES:
                self._conn.execute(index.replace("{t}", TABLE))

    def save(self, records: Sequence[Record]) -> None:
        with self._locked() as conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(_SAVE, records)
            conn.execute("COMMIT")
        self.changed()

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self._locked() as conn:
            return conn.execute(sql.replace("{t}", TABLE), params).fetchall()

    def _write(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> int:
        with self._locked() as conn:
            conn.execute("BEGIN IMMEDIATE")
            changed = sum(conn.execute(s.replace("{t}", TABLE), p).rowcount for s, p in statements)
            conn.execute("COMMIT")
        return changed

    def close(self) -> None:
        with FORK_GATE, self._lock:
            self._conn.close()

    @contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        """The connection under the lock; a failed transaction is rolled back, errors named."""
        with FORK_GATE, self._lock:
            try:
                yield self._conn
            except sqlite3.Error as exc:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise BackendConnectionError(
                    f"dashboard history {str(self.path)!r} failed: {exc}"
                ) from exc


def _migrate(conn: sqlite3.Connection) -> None:
    """Add the filter columns to a table written by an older dashboard, and fill them."""
    conn.execute("BEGIN IMMEDIATE")  # before looking: another dashboard may be migrating
    try:
        have = {str(row[1]) for row in conn.execute(f"PRAGMA table_info({TABLE})")}
        missing = [c for c in COLUMNS if c not in have]
        for column in missing:
            conn.execute(f"ALTER TABLE {TABLE} ADD COLUMN {column} TEXT")
        if missing:
            filled = ", ".join(f"{c} = json_extract(record, '{p}')" for c, p in COLUMNS.items())
            conn.execute(f"UPDATE {TABLE} SET {filled}")
        conn.execute("COMMIT")
    except sqlite3.Error:
        conn.execute("ROLLBACK")
        raise
