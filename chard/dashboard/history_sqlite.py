"""The dashboard's history in the SQLite result backend's file: one table beside its own.

``chard_dashboard_tasks(uuid PRIMARY KEY, changed, record, state, name, worker, args,
kwargs)``: the last five are copied out of the JSON record on write (``json_extract``)
so the task list's filters are SQL. Indexes on ``changed`` (loading the newest,
trimming the oldest, the list's order and time range) and on ``(state, changed)``,
``(name, changed)``, ``(worker, changed)`` (a filtered page walks one index; counts
per state and the names are index-only). Substrings (name, args) scan the table.

A table written before those columns existed gets them, filled from the records,
when it is first opened (:func:`_migrate`).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from chard._sqlite import parse_sqlite_url
from chard.dashboard.history import History, Record, decode
from chard.dashboard.query import Found, TaskFilter
from chard.exceptions import BackendConnectionError, ImproperlyConfigured

#: Seconds a statement waits for another process's write lock, as the backend does.
BUSY_TIMEOUT = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chard_dashboard_tasks (
    uuid TEXT PRIMARY KEY, changed REAL NOT NULL, record TEXT NOT NULL
);
"""
#: The columns the filters read, each copied out of the record (the migration adds them).
_COLUMNS = ("state", "name", "worker", "args", "kwargs")
_INDEXES = """
CREATE INDEX IF NOT EXISTS chard_dashboard_tasks_changed ON chard_dashboard_tasks (changed);
CREATE INDEX IF NOT EXISTS chard_dashboard_tasks_state ON chard_dashboard_tasks (state, changed);
CREATE INDEX IF NOT EXISTS chard_dashboard_tasks_name ON chard_dashboard_tasks (name, changed);
CREATE INDEX IF NOT EXISTS chard_dashboard_tasks_worker ON chard_dashboard_tasks (worker, changed);
"""
_EXTRACTED = ", ".join(f"json_extract(?3, '$.{c}')" for c in _COLUMNS)
_SAVE = (
    f"INSERT OR REPLACE INTO chard_dashboard_tasks (uuid, changed, record, {', '.join(_COLUMNS)}) "
    f"VALUES (?1, ?2, ?3, {_EXTRACTED})"
)


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
            _migrate(self._conn)
            self._conn.executescript(_INDEXES)
        except sqlite3.Error as exc:
            raise ImproperlyConfigured(
                f"cannot open the dashboard history in {str(self.path)!r}: {exc}; "
                "check that the result backend's file is writable"
            ) from exc

    def save(self, records: Sequence[Record]) -> None:
        with self._locked() as conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(_SAVE, records)
            conn.execute("COMMIT")

    def load(self, limit: int) -> list[tuple[str, str]]:
        sql = "SELECT uuid, record FROM chard_dashboard_tasks ORDER BY changed DESC LIMIT ?"
        with self._locked() as conn:
            rows = conn.execute(sql, (limit,)).fetchall()
        return [(str(uuid), str(record)) for uuid, record in reversed(rows)]

    def get(self, uuid: str) -> str | None:
        sql = "SELECT record FROM chard_dashboard_tasks WHERE uuid = ?"
        with self._locked() as conn:
            row = conn.execute(sql, (uuid,)).fetchone()
        return None if row is None else str(row[0])

    def search(self, where: TaskFilter, offset: int, limit: int) -> Found:
        clause, params = _where(where)
        page = (
            f"SELECT uuid, record FROM chard_dashboard_tasks{clause} "
            "ORDER BY changed DESC LIMIT ? OFFSET ?"
        )
        with self._locked() as conn:
            rows = conn.execute(page, (*params, limit, offset)).fetchall()
            if offset == 0 and len(rows) < limit:
                total = len(rows)  # the whole answer is on this page
            else:
                count = f"SELECT COUNT(*) FROM chard_dashboard_tasks{clause}"
                total = int(conn.execute(count, params).fetchone()[0])
            by_state = "SELECT state, COUNT(*) FROM chard_dashboard_tasks GROUP BY state"
            counts = {str(s): int(n) for s, n in conn.execute(by_state) if s is not None}
            distinct = "SELECT DISTINCT name FROM chard_dashboard_tasks WHERE name IS NOT NULL"
            names = sorted(str(n) for (n,) in conn.execute(distinct))
        tasks = [t for t in (decode(str(u), str(r)) for u, r in rows) if t is not None]
        return Found(total, tasks, counts, names)

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


def _where(where: TaskFilter) -> tuple[str, list[Any]]:
    """Return ``where`` as a WHERE clause (or "") and its parameters, with the same meaning."""
    text, low = where.search, where.id
    candidates: list[tuple[Any, str, tuple[Any, ...]]] = [
        (where.state, "state = ?", (where.state,)),
        (where.worker, "worker = ?", (where.worker,)),
        (where.name, "instr(name, ?) > 0", (where.name,)),
        (low, "uuid >= ? AND uuid < ?", (low, f"{low}\U0010ffff")),  # a prefix: a key range
        (where.since, "changed >= ?", (where.since,)),
        (where.until, "changed <= ?", (where.until,)),
        (text, "(instr(args, ?) > 0 OR instr(kwargs, ?) > 0)", (text, text)),
    ]
    terms = [(sql, params) for value, sql, params in candidates if value is not None]
    clause = " AND ".join(sql for sql, _ in terms)
    return (f" WHERE {clause}" if terms else ""), [p for _, params in terms for p in params]


def _migrate(conn: sqlite3.Connection) -> None:
    """Add the filter columns to a table written by an older dashboard, and fill them."""
    conn.execute("BEGIN IMMEDIATE")  # before looking: another dashboard may be migrating
    try:
        have = {str(row[1]) for row in conn.execute("PRAGMA table_info(chard_dashboard_tasks)")}
        missing = [c for c in _COLUMNS if c not in have]
        for column in missing:
            conn.execute(f"ALTER TABLE chard_dashboard_tasks ADD COLUMN {column} TEXT")
        if missing:
            filled = ", ".join(f"{c} = json_extract(record, '$.{c}')" for c in _COLUMNS)
            conn.execute(f"UPDATE chard_dashboard_tasks SET {filled}")
        conn.execute("COMMIT")
    except sqlite3.Error:
        conn.execute("ROLLBACK")
        raise
