"""The dashboard's history in the SQLite result backend's file: one table beside its own.

``chard_dashboard_tasks(uuid PRIMARY KEY, changed, record, state, name, worker, args,
kwargs, root_id, parent_id, group_id, chord_body_id)``: all but the first three are
copied out of the JSON record on write (``json_extract``), so the task list's filters
and the workflow graph's links are SQL. Indexes: ``(changed, state, worker, name,
args, kwargs)`` (the list's order and time range, loading the newest, trimming the
oldest; and a substring filter scans this narrow index, never the records), ``(state,
worker, changed)``, ``(name, changed)`` and ``(worker, changed)`` (an equality filter
walks one range; counts per state and the names read an index only), and one on each
link column. Measured with 100,000 tasks: README, "Dashboard".

A table written before those columns existed gets them, filled from the records,
when it is first opened (:func:`_migrate`).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from chard._sqlite import parse_sqlite_url
from chard.dashboard.history import History, Record, decode
from chard.dashboard.query import Found, Links, TaskFilter
from chard.events.state import TaskState
from chard.exceptions import BackendConnectionError, ImproperlyConfigured

#: Seconds a statement waits for another process's write lock, as the backend does.
BUSY_TIMEOUT = 30.0
#: Seconds the counts per state and the names are reused (another process may write).
SUMMARY_TTL = 2.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chard_dashboard_tasks (
    uuid TEXT PRIMARY KEY, changed REAL NOT NULL, record TEXT NOT NULL
);
"""
#: The columns the filters and the workflow graph read, each copied out of the record
#: (a JSON path); :func:`_migrate` adds those an older table lacks.
_COLUMNS = {
    "state": "$.state", "name": "$.name", "worker": "$.worker", "args": "$.args",
    "kwargs": "$.kwargs", "root_id": "$.root_id", "parent_id": "$.parent_id",
    "group_id": "$.extra.group_id", "chord_body_id": "$.extra.chord_body_id",
}  # fmt: skip
#: ``list`` holds every column a filter reads, in the list's order: a filter on them
#: reads that index only, never the records (which are most of the table's bytes).
_INDEXES = """
DROP INDEX IF EXISTS chard_dashboard_tasks_changed;
CREATE INDEX IF NOT EXISTS chard_dashboard_tasks_list
    ON chard_dashboard_tasks (changed, state, worker, name, args, kwargs);
DROP INDEX IF EXISTS chard_dashboard_tasks_state;
CREATE INDEX IF NOT EXISTS chard_dashboard_tasks_state_worker
    ON chard_dashboard_tasks (state, worker, changed);
CREATE INDEX IF NOT EXISTS chard_dashboard_tasks_name ON chard_dashboard_tasks (name, changed);
CREATE INDEX IF NOT EXISTS chard_dashboard_tasks_worker ON chard_dashboard_tasks (worker, changed);
CREATE INDEX IF NOT EXISTS chard_dashboard_tasks_root ON chard_dashboard_tasks (root_id);
CREATE INDEX IF NOT EXISTS chard_dashboard_tasks_parent ON chard_dashboard_tasks (parent_id)
    WHERE parent_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS chard_dashboard_tasks_group ON chard_dashboard_tasks (group_id)
    WHERE group_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS chard_dashboard_tasks_body ON chard_dashboard_tasks (chord_body_id)
    WHERE chord_body_id IS NOT NULL;
"""
_EXTRACTED = ", ".join(f"json_extract(?3, '{path}')" for path in _COLUMNS.values())
_SAVE = (
    "INSERT OR REPLACE INTO chard_dashboard_tasks "
    f"(uuid, changed, record, {', '.join(_COLUMNS)}) "
    f"VALUES (?1, ?2, ?3, {_EXTRACTED})"
)


class SQLiteHistory(History):
    """Task records in a SQLite file (WAL), shared by the dashboards of one machine."""

    def __init__(self, url: str) -> None:
        self.path = parse_sqlite_url(url)
        self._lock = threading.Lock()
        self._summary_cache: tuple[float, dict[str, int], list[str]] | None = None
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
            self._summary_cache = None
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
            counts, names = self._summary(conn)
        tasks = [t for t in (decode(str(u), str(r)) for u, r in rows) if t is not None]
        return Found(total, tasks, counts, names)

    def neighbours(self, linked: Links, limit: int) -> list[TaskState] | None:
        lists = [
            ("uuid", linked.named), ("root_id", linked.roots), ("group_id", linked.groups),
            ("parent_id", linked.ids), ("chord_body_id", linked.ids),
        ]  # fmt: skip
        terms = [f"{column} IN ({','.join('?' * len(v))})" for column, v in lists if v]
        if not terms:
            return []
        params = [value for _, values in lists for value in sorted(values)]
        sql = (
            f"SELECT uuid, record FROM chard_dashboard_tasks WHERE ({' OR '.join(terms)}) "
            f"AND uuid NOT IN ({','.join('?' * len(linked.ids))}) LIMIT ?"
        )
        with self._locked() as conn:
            rows = conn.execute(sql, (*params, *sorted(linked.ids), limit)).fetchall()
        return [t for t in (decode(str(u), str(r)) for u, r in rows) if t is not None]

    def _summary(self, conn: sqlite3.Connection) -> tuple[dict[str, int], list[str]]:
        """Tasks per state and the names, over the whole store: index-only, yet each
        reads every entry, so the answer is reused for :data:`SUMMARY_TTL` seconds
        (or until this process writes)."""
        now = time.monotonic()
        if self._summary_cache is not None and now - self._summary_cache[0] < SUMMARY_TTL:
            return self._summary_cache[1], self._summary_cache[2]
        by_state = "SELECT state, COUNT(*) FROM chard_dashboard_tasks GROUP BY state"
        counts = {str(s): int(n) for s, n in conn.execute(by_state) if s is not None}
        distinct = "SELECT DISTINCT name FROM chard_dashboard_tasks WHERE name IS NOT NULL"
        names = sorted(str(n) for (n,) in conn.execute(distinct))
        self._summary_cache = (now, counts, names)
        return counts, names

    def trim(self, max_count: int, older_than: float | None) -> int:
        with self._locked() as conn:
            conn.execute("BEGIN IMMEDIATE")
            deleted = 0
            self._summary_cache = None
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
            filled = ", ".join(f"{c} = json_extract(record, '{p}')" for c, p in _COLUMNS.items())
            conn.execute(f"UPDATE chard_dashboard_tasks SET {filled}")
        conn.execute("COMMIT")
    except sqlite3.Error:
        conn.execute("ROLLBACK")
        raise
