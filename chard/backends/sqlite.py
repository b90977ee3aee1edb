"""The embedded default result backend: one SQLite file, shared by local processes.

Results live in a key/value table (``chard_results``) with an absolute expiry
time. Expired rows are invisible to reads at once and deleted in batches by
writers now and then, so a read is a single primary-key lookup and never writes.

The file may be shared with the SQLite broker (chard's default puts both in
``chard.sqlite3``): this module touches only its own table, and sets only WAL
(persistent, and what the broker wants too) plus per-connection pragmas.

SQLite cannot notify another process, so :meth:`wait_for` polls with the base
class's back-off; that is why reads are kept cheap.

Connections: one per thread (a SQLite connection must not be used by two threads
at once) and a fresh one after ``fork()``. A connection inherited from the parent
is never used or closed in the child, as SQLite's documentation requires, and no
child is forked while a statement runs (see :data:`chard._sqlite.FORK_GATE`).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from chard._sqlite import FORK_GATE, parse_sqlite_url
from chard.backends.base import ResultBackend
from chard.exceptions import BackendError

logger = logging.getLogger(__name__)

TABLE = "chard_results"

#: Seconds a statement waits for another process's write lock before failing.
DEFAULT_BUSY_TIMEOUT = 30.0
#: Seconds between two deletions of expired rows by one process.
DEFAULT_PURGE_INTERVAL = 60.0
#: Keys per ``_mget`` statement: below SQLite's historic limit of 999 parameters.
MGET_CHUNK = 900

_SCHEMA = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} ("
    " key TEXT PRIMARY KEY,"
    " value BLOB NOT NULL,"
    " expires_at REAL"  # unix seconds (processes share no monotonic clock); NULL: never
    ") WITHOUT ROWID",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_expires_at ON {TABLE} (expires_at)"
    " WHERE expires_at IS NOT NULL",
)
_LIVE = "(expires_at IS NULL OR expires_at > ?)"
_GET = f"SELECT value FROM {TABLE} WHERE key = ? AND {_LIVE}"
_SET = (
    f"INSERT INTO {TABLE} (key, value, expires_at) VALUES (?, ?, ?)"
    " ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at"
)
# One statement, so the read-modify-write is atomic across processes; an expired
# counter restarts from zero like a missing one.
_INCR = (
    f"INSERT INTO {TABLE} (key, value, expires_at) VALUES (?, 1, ?)"
    " ON CONFLICT (key) DO UPDATE SET"
    " value = CASE WHEN expires_at IS NOT NULL AND expires_at <= ? THEN 1"
    " ELSE CAST(value AS INTEGER) + 1 END,"
    " expires_at = excluded.expires_at"
    " RETURNING value"
)
_DELETE = f"DELETE FROM {TABLE} WHERE key = ?"
_PURGE = f"DELETE FROM {TABLE} WHERE expires_at IS NOT NULL AND expires_at <= ?"

#: Connections opened before a fork, kept referenced in the child so that garbage
#: collection never closes them there (closing runs SQLite code on the parent's state).
_INHERITED: list[sqlite3.Connection] = []


class _Handle:
    """One thread's connection, tagged with the process that opened it."""

    __slots__ = ("__weakref__", "conn", "pid")

    def __init__(self, conn: sqlite3.Connection, pid: int) -> None:
        self.conn = conn
        self.pid = pid


class SQLiteResultBackend(ResultBackend):
    """Store results in a SQLite file; safe for many threads and local processes.

    Options:
        busy_timeout: seconds to wait for another writer (default 30).
        purge_interval: seconds between deletions of expired rows (default 60).
    """

    def __init__(
        self,
        url: str = "sqlite:///chard.sqlite3",
        *,
        expires: float | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(url, expires=expires, options=options)
        # Resolved once, so a later chdir() or a forked child opens the same file.
        self.path = parse_sqlite_url(url, should_ignore_query=True)
        self.busy_timeout = float(self.options.get("busy_timeout", DEFAULT_BUSY_TIMEOUT))
        self.purge_interval = float(self.options.get("purge_interval", DEFAULT_PURGE_INTERVAL))
        self._local = threading.local()
        # Handles of this process, so close() reaches every thread's connection;
        # weak, so a finished thread's connection is closed with its thread-local.
        self._handles: weakref.WeakSet[_Handle] = weakref.WeakSet()
        self._handles_lock = threading.Lock()
        self._next_purge = 0.0

    # -- connections --------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        handle: _Handle | None = getattr(self._local, "handle", None)
        pid = os.getpid()
        if handle is not None and handle.pid == pid:
            return handle.conn
        if handle is not None:  # inherited through fork(): never touch it again
            _INHERITED.append(handle.conn)
        handle = _Handle(self._connect(), pid)
        self._local.handle = handle
        with self._handles_lock:
            if any(h.pid != pid for h in self._handles):
                self._handles = weakref.WeakSet()  # the parent's: not ours to close
            self._handles.add(handle)
        return handle.conn

    def _connect(self) -> sqlite3.Connection:
        try:
            # Autocommit (isolation_level=None): each statement is its own
            # transaction, and no read snapshot is held between calls.
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,  # we guarantee one thread per connection
            )
            self._enable_wal(conn)
            # Results can be recomputed; skipping an fsync per commit is WAL's safe default.
            conn.execute("PRAGMA synchronous = NORMAL")
            for statement in _SCHEMA:
                conn.execute(statement)
        except sqlite3.Error as exc:
            raise BackendError(
                f"cannot open the SQLite result store {str(self.path)!r}: {exc}; "
                "is the directory writable, and is no other process holding a long write?"
            ) from exc
        logger.debug("Opened SQLite result store %s in process %d", self.path, os.getpid())
        return conn

    def _enable_wal(self, conn: sqlite3.Connection) -> None:
        """Switch the file to WAL unless it already is (the mode is stored in the file).

        Leaving rollback mode needs an exclusive lock, and SQLite answers "database
        is locked" at once, without its busy handler, when processes open a new file
        together; so retry here until ``busy_timeout``.
        """
        deadline = time.monotonic() + self.busy_timeout
        pause = 0.001
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode").fetchall()[0][0]
                if str(mode).lower() != "wal":
                    conn.execute("PRAGMA journal_mode = WAL").fetchall()
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                    raise
                logger.debug("Waiting to switch %s to WAL: %s", self.path, exc)
            time.sleep(pause)  # back-off between lock attempts, not synchronisation
            pause = min(pause * 2, 0.1)

    def close(self) -> None:
        """Close this process's connections; a later call opens new ones."""
        with self._handles_lock:
            handles = [h for h in self._handles if h.pid == os.getpid()]
            self._handles = weakref.WeakSet()
        with FORK_GATE:
            for handle in handles:
                handle.conn.close()
        self._local = threading.local()

    # -- primitives ---------------------------------------------------------
    def _get(self, key: str) -> bytes | None:
        # fetchall() finishes the statement, so no read transaction stays open.
        rows = self._run(_GET, (key, time.time()))
        return _as_bytes(rows[0][0]) if rows else None

    def _mget(self, keys: Sequence[str]) -> list[bytes | None]:
        """Fetch all ``keys`` in one statement (one per ``MGET_CHUNK`` keys)."""
        found: dict[str, bytes] = {}
        now = time.time()
        for start in range(0, len(keys), MGET_CHUNK):
            chunk = list(dict.fromkeys(keys[start : start + MGET_CHUNK]))
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT key, value FROM {TABLE} WHERE key IN ({marks}) AND {_LIVE}"
            for key, value in self._run(sql, (*chunk, now)):
                found[key] = _as_bytes(value)
        return [found.get(key) for key in keys]

    def _set(self, key: str, value: bytes, ttl: float | None) -> None:
        now = time.time()
        self._run(_SET, (key, value, None if ttl is None else now + ttl))
        self._purge_expired(now)

    def _delete(self, key: str) -> None:
        self._run(_DELETE, (key,))

    def _incr(self, key: str, ttl: float | None) -> int:
        now = time.time()
        rows = self._run(_INCR, (key, None if ttl is None else now + ttl, now))
        self._purge_expired(now)
        return int(rows[0][0])

    # -- helpers ------------------------------------------------------------
    def _run(self, sql: str, params: Sequence[Any]) -> list[Any]:
        try:
            with FORK_GATE:  # a fork waits for this statement to end
                return self._conn().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise BackendError(f"SQLite result store {str(self.path)!r} failed: {exc}") from exc

    def _purge_expired(self, now: float) -> None:
        """Delete expired rows at most once per ``purge_interval`` in this process."""
        if now < self._next_purge:
            return
        self._next_purge = now + self.purge_interval
        try:
            with FORK_GATE:
                deleted = self._conn().execute(_PURGE, (now,)).rowcount
        except sqlite3.Error as exc:  # housekeeping: the next writer tries again
            logger.warning("Cannot delete expired results from %s: %s", self.path, exc)
            self._next_purge = now
            return
        if deleted:
            logger.debug("Deleted %d expired results from %s", deleted, self.path)


def _as_bytes(value: bytes | int | str) -> bytes:
    """Return a stored value as bytes; counters are stored as integers."""
    if isinstance(value, bytes):
        return value
    return str(value).encode()
