"""The dashboard's history in the SQLite result backend's file: one table beside its own.

``chard_dashboard_tasks(uuid PRIMARY KEY, changed, record)`` with an index on
``changed``, so loading the newest and trimming the oldest are index range scans.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from chard._sqlite import parse_sqlite_url
from chard.dashboard.history import History, Record
from chard.exceptions import BackendConnectionError, ImproperlyConfigured

#: Seconds a statement waits for another process's write lock, as the backend does.
BUSY_TIMEOUT = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chard_dashboard_tasks (
    uuid TEXT PRIMARY KEY, changed REAL NOT NULL, record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS chard_dashboard_tasks_changed ON chard_dashboard_tasks (changed);
"""


class SQLiteHistory(History):
    """Task records in a SQLite file (WAL), shared by the dashboards of one machine."""

    def __init__(self, url: str) -> None:
        self.path = parse_sqlite_url(url)
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
            self._conn.execute("PRAGMA journal_mode = WAL").fetchall()
            self._conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise ImproperlyConfigured(
                f"cannot open the dashboard history in {str(self.path)!r}: {exc}; "
                "check that the result backend's file is writable"
            ) from exc

    def save(self, records: Sequence[Record]) -> None:
        sql = "INSERT OR REPLACE INTO chard_dashboard_tasks (uuid, changed, record) VALUES (?,?,?)"
        with self._locked() as conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(sql, records)
            conn.execute("COMMIT")

    def load(self, limit: int) -> list[tuple[str, str]]:
        sql = "SELECT uuid, record FROM chard_dashboard_tasks ORDER BY changed DESC LIMIT ?"
        with self._locked() as conn:
            rows = conn.execute(sql, (limit,)).fetchall()
        return [(str(uuid), str(record)) for uuid, record in reversed(rows)]

    def trim(self, max_count: int, older_than: float | None) -> int:
        with self._locked() as conn:
            conn.execute("BEGIN IMMEDIATE")
            deleted = 0
            if older_than is not None:
                sql = "DELETE FROM chard_dashboard_tasks WHERE changed < ?"
                deleted += conn.execute(sql, (older_than,)).rowcount
            row = conn.execute(
                "SELECT changed FROM chard_dashboard_tasks ORDER BY changed DESC LIMIT 1 OFFSET ?",
                (max_count,),
            ).fetchone()
            if row is not None:
                sql = "DELETE FROM chard_dashboard_tasks WHERE changed <= ?"
                deleted += conn.execute(sql, (row[0],)).rowcount
            conn.execute("COMMIT")
        return deleted

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        """The connection under the lock; a failed transaction is rolled back, errors named."""
        with self._lock:
            try:
                yield self._conn
            except sqlite3.Error as exc:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise BackendConnectionError(
                    f"dashboard history {str(self.path)!r} failed: {exc}"
                ) from exc
