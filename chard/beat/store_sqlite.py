"""The SQLite schedule store: beat's tables beside the broker's, in the same file.

Tables: ``chard_beat_entries`` (name, JSON definition), ``chard_beat_runs`` (name, last run in
epoch microseconds, total runs), ``chard_beat_lease`` (one row: owner, expiry in unix seconds)
and ``chard_beat_firings`` (claimed slot keys). Every write is one ``BEGIN IMMEDIATE``
transaction, so the lease check-and-set and the firing claim are atomic across processes. Lease
expiry uses the wall clock, which every process on the machine shares (SQLite is one-machine).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from chard._sqlite import FORK_GATE, parse_sqlite_url
from chard._utils.clock import Clock
from chard.beat.store import ScheduleStore
from chard.exceptions import BrokerConnectionError, ImproperlyConfigured

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds a statement waits for another process's write lock, as the broker does.
BUSY_TIMEOUT = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chard_beat_entries (name TEXT PRIMARY KEY, definition TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chard_beat_runs (
    name TEXT PRIMARY KEY, last_run_at INTEGER NOT NULL, total_run_count INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS chard_beat_lease (
    id INTEGER PRIMARY KEY CHECK (id = 1), owner TEXT NOT NULL, expires REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS chard_beat_firings (key TEXT PRIMARY KEY, expires REAL NOT NULL);
CREATE INDEX IF NOT EXISTS chard_beat_firings_expires ON chard_beat_firings (expires);
"""
_UPSERT_RUN = """
INSERT INTO chard_beat_runs (name, last_run_at, total_run_count) VALUES (?, ?, ?)
ON CONFLICT (name) DO UPDATE SET
    last_run_at = max(last_run_at, excluded.last_run_at),
    total_run_count = max(total_run_count, excluded.total_run_count)
"""
_LEASE = """
INSERT INTO chard_beat_lease (id, owner, expires) VALUES (1, :owner, :expires)
ON CONFLICT (id) DO UPDATE SET owner = excluded.owner, expires = excluded.expires
WHERE chard_beat_lease.owner = excluded.owner OR chard_beat_lease.expires <= :now
"""


class SQLiteScheduleStore(ScheduleStore):
    """Beat's state in a SQLite file (WAL): for the beats and editors of one machine.

    Args:
        target: The broker's ``sqlite:///`` URL (or a plain path to its file, for tools).
        clock: Wall-clock source for lease and firing expiry.
    """

    def __init__(self, target: str, clock: Clock | None = None) -> None:
        super().__init__(clock)
        # Resolved once, so a later chdir() still opens the same file.
        self.path = parse_sqlite_url(target) if "://" in target else Path(target).resolve()
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = os.getpid()
        with self._connection():  # fail fast on a bad path, and create the tables
            pass

    def __repr__(self) -> str:
        return f"<SQLiteScheduleStore {self.path}>"

    def _read_definitions(self) -> dict[str, str]:
        rows = self._read("SELECT name, definition FROM chard_beat_entries")
        return {str(name): str(text) for name, text in rows}

    def _write_definition(self, name: str, text: str) -> None:
        sql = "INSERT OR REPLACE INTO chard_beat_entries (name, definition) VALUES (?, ?)"
        self._write(lambda conn: conn.execute(sql, (name, text)))

    def _delete_definition(self, name: str) -> bool:
        def delete(conn: sqlite3.Connection) -> bool:
            conn.execute("DELETE FROM chard_beat_runs WHERE name = ?", (name,))
            sql = "DELETE FROM chard_beat_entries WHERE name = ?"
            return conn.execute(sql, (name,)).rowcount > 0

        return self._write(delete)

    def _read_runs(self) -> dict[str, tuple[int, int]]:
        rows = self._read("SELECT name, last_run_at, total_run_count FROM chard_beat_runs")
        return {str(name): (int(at), int(count)) for name, at, count in rows}

    def _write_run(self, name: str, at_us: int, count: int) -> None:
        self._write(lambda conn: conn.execute(_UPSERT_RUN, (name, at_us, count)))

    def _acquire_lease(self, owner: str, timeout: float) -> bool:
        now = self.clock.time()
        params = {"owner": owner, "expires": now + timeout, "now": now}

        def acquire(conn: sqlite3.Connection) -> bool:
            conn.execute(_LEASE, params)
            row = conn.execute("SELECT owner FROM chard_beat_lease WHERE id = 1").fetchone()
            return bool(row is not None and row[0] == owner)

        return self._write(acquire)

    def _release_lease(self, owner: str) -> None:
        sql = "DELETE FROM chard_beat_lease WHERE id = 1 AND owner = ?"
        self._write(lambda conn: conn.execute(sql, (owner,)))

    def _read_lease(self) -> tuple[str, float] | None:
        now = self.clock.time()
        rows = self._read("SELECT owner, expires FROM chard_beat_lease WHERE id = 1")
        if not rows or float(rows[0][1]) <= now:
            return None
        return str(rows[0][0]), float(rows[0][1]) - now

    def _claim(self, key: str, ttl: float) -> bool:
        now = self.clock.time()

        def claim(conn: sqlite3.Connection) -> bool:
            conn.execute("DELETE FROM chard_beat_firings WHERE expires <= ?", (now,))
            sql = "INSERT OR IGNORE INTO chard_beat_firings (key, expires) VALUES (?, ?)"
            return conn.execute(sql, (key, now + ttl)).rowcount == 1

        return self._write(claim)

    def close(self) -> None:
        """Close the connection (in the process that opened it); the next call reopens."""
        with FORK_GATE, self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    # -- plumbing -------------------------------------------------------------
    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        if self._pid != os.getpid():  # a forked child never touches the parent's handle
            self._lock, self._conn, self._pid = threading.Lock(), None, os.getpid()
        with FORK_GATE, self._lock:  # a fork waits for this use to end
            if self._conn is None:
                self._conn = self._connect()
            try:
                yield self._conn
            except sqlite3.OperationalError as exc:
                raise BrokerConnectionError(
                    f"beat schedule store {str(self.path)!r} failed: {exc}"
                ) from exc

    def _connect(self) -> sqlite3.Connection:
        try:
            # Autocommit: transactions are explicit, and no read snapshot is held open.
            conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
            if conn.execute("PRAGMA journal_mode").fetchall()[0][0].lower() != "wal":
                conn.execute("PRAGMA journal_mode = WAL").fetchall()
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise ImproperlyConfigured(
                f"cannot open the beat schedule store {str(self.path)!r}: {exc}; "
                "check that the path is a writable SQLite file"
            ) from exc
        return conn

    def _read(self, sql: str) -> list[tuple[Any, ...]]:  # SQLite values, typed by the query
        with self._connection() as conn:
            return conn.execute(sql).fetchall()

    def _write(self, action: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``action`` in one write transaction, taken up front (no upgrade deadlocks)."""
        with self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = action(conn)
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result
