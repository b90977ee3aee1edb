"""The embedded default broker: one SQLite file shared by the processes of one machine.

Schema (``chard_messages`` and ``chard_dead_letters``; the file may also hold the
SQLite result backend's table):

* A message row stays in place from publish to ack. Leasing it sets
  ``lease_owner`` (this instance's consumer id), a fresh random ``lease_token``
  and ``lease_expires``; the lease is taken with one ``UPDATE ... RETURNING``,
  so two consumers can never lease the same row. A row whose lease has lapsed
  is simply due again, and leasing it counts one more delivery. Settling
  matches on ``(id, lease_token)``, so a consumer whose lease lapsed cannot
  touch the row once someone else leased it.
* ``delivery_count`` counts leases; ``reject(requeue=True)`` takes its own back.
* Order is ``priority`` (0 first), then ``id`` (publish order); ``due_at`` (the
  ETA, or the publish time) hides a message until then.

Waiting: a consumer polls with exponential back-off (5 ms up to 0.5 s) and,
between polls, sleeps on a unix-socket doorbell that every publish rings (see
:mod:`chard.brokers._wake`), so an idle consumer costs a few cheap reads per
second and a new message is seen within milliseconds. Polls are read-only
until there is something to lease, so idle consumers never take the write lock.

Broadcast channels: ``chard_broadcasts`` rows (an AUTOINCREMENT id is the cursor,
so ids are never reused after pruning), pruned to the newest ``broadcast_maxlen``
per channel in the inserting transaction. A reader waits like a consumer, on a
doorbell of its own in ``<db>.wake/broadcast/`` that only broadcasts ring: a
publish does not wake it, nor a broadcast the consumers.

Connections: one per instance, behind a lock (the consume thread and the
heartbeat thread share it; SQLite serialises writers anyway). After ``fork()``
the child opens its own; the inherited connection is never used or closed there.
Every use is inside :data:`chard._sqlite.FORK_GATE`, so no child is forked while
another thread is mid-transaction (it would inherit that transaction's locks).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from chard._sqlite import FORK_GATE, parse_sqlite_url
from chard._utils.clock import Clock, SystemClock
from chard.brokers import _wake
from chard.brokers.base import (
    Broker,
    DeadLetter,
    DelayedMessage,
    Delivery,
    LeasedRow,
    OutgoingMessage,
    clamp_priority,
    parse_sequence_cursor,
    take_fairly,
)
from chard.exceptions import BrokerConnectionError, BrokerError, ImproperlyConfigured

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds a statement waits for another process's write lock before failing.
DEFAULT_BUSY_TIMEOUT = 30.0
#: First and longest pause between two polls of an idle fetch (seconds).
POLL_INTERVAL_MIN = 0.005
POLL_INTERVAL_MAX = 0.5

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chard_messages (
    id INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    due_at REAL NOT NULL,          -- unix seconds: processes share no monotonic clock
    body BLOB NOT NULL,
    delivery_count INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_token INTEGER,
    lease_expires REAL
);
CREATE INDEX IF NOT EXISTS chard_messages_next ON chard_messages (queue, priority, id);
CREATE INDEX IF NOT EXISTS chard_messages_owner ON chard_messages (lease_owner)
    WHERE lease_owner IS NOT NULL;
CREATE TABLE IF NOT EXISTS chard_dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: an operator may hold an old id
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    body BLOB NOT NULL,
    reason TEXT NOT NULL,
    failed_at REAL NOT NULL,
    delivery_count INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS chard_broadcasts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- the cursor: never reused after pruning
    channel TEXT NOT NULL,
    payload BLOB NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS chard_broadcasts_channel ON chard_broadcasts (channel, id);
"""
# A message is waiting when it is not leased or its lease lapsed; due when also past its ETA.
_WAITING = "(lease_expires IS NULL OR lease_expires <= :now)"
_DUE = f"due_at <= :now AND {_WAITING}"
_INSERT = "INSERT INTO chard_messages (queue, priority, due_at, body) VALUES (?, ?, ?, ?)"
_LEASE = f"""
UPDATE chard_messages
SET lease_owner = :owner, lease_token = random(), lease_expires = :expires,
    delivery_count = delivery_count + 1
WHERE id IN (
    SELECT id FROM chard_messages WHERE queue = :queue AND {_DUE}
    ORDER BY priority, id LIMIT :limit
)
RETURNING id, lease_token, queue, body, delivery_count, priority
"""
_MINE = "id = ? AND lease_token = ?"
# A new token: the dead consumer's deliveries no longer match. Lapsed rows still name it.
_TAKE_OVER = """
UPDATE chard_messages
SET lease_owner = :owner, lease_token = random(), lease_expires = :expires
WHERE lease_owner = :dead
RETURNING id, lease_token, queue, body, delivery_count, priority
"""
# Everything older than the newest :keep entries of :channel.
_PRUNE_BROADCASTS = """
DELETE FROM chard_broadcasts WHERE channel = :channel AND id <= (
    SELECT id FROM chard_broadcasts WHERE channel = :channel
    ORDER BY id DESC LIMIT 1 OFFSET :keep
)
"""


class SQLiteDelivery(LeasedRow):
    """A leased row; settles only while this lease's token is still on it."""

    def __init__(self, broker: SQLiteBroker, row: Sequence[Any]) -> None:
        super().__init__(row)
        self._broker = broker

    def ack(self) -> None:
        self._settle("DELETE FROM chard_messages WHERE " + _MINE)

    def reject(self, requeue: bool = False) -> None:
        if not requeue:
            self._settle("DELETE FROM chard_messages WHERE " + _MINE)
            return
        self._settle(
            "UPDATE chard_messages SET lease_owner = NULL, lease_token = NULL,"
            " lease_expires = NULL, delivery_count = delivery_count - 1 WHERE " + _MINE
        )
        self._broker._ring()

    def dead_letter(self, reason: str) -> None:
        def move(conn: sqlite3.Connection) -> None:
            rows = conn.execute(
                "DELETE FROM chard_messages WHERE "
                + _MINE
                + " RETURNING queue, priority, body, delivery_count",
                self._key,
            ).fetchall()
            conn.executemany(
                "INSERT INTO chard_dead_letters"
                " (queue, priority, body, reason, failed_at, delivery_count)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(q, p, b, reason, self._broker.clock.time(), n) for q, p, b, n in rows],
            )

        if not self._settled:
            self._broker._write(move)
            self._settled = True

    def _settle(self, sql: str) -> None:
        # Settling twice is a no-op; a failed write (broker down) may be retried.
        if not self._settled:
            self._broker._write(lambda conn: conn.execute(sql, self._key))
            self._settled = True


class SQLiteBroker(Broker):
    """Queues in a SQLite file (WAL); safe for the threads and processes of one machine.

    Options:
        lease_timeout: seconds before a dead consumer's messages are redelivered.
        busy_timeout: seconds to wait for another process's write lock (default 30).
    """

    def __init__(
        self, url: str, options: Mapping[str, Any] | None = None, *, clock: Clock | None = None
    ) -> None:
        super().__init__(url, options)
        self.clock: Clock = clock or SystemClock()
        # Resolved once, so a later chdir() or a forked child opens the same file.
        self.path = parse_sqlite_url(url)
        self.busy_timeout = float(self.options.get("busy_timeout", DEFAULT_BUSY_TIMEOUT))
        self._wake_dir = _wake.wake_dir(self.path)
        self._broadcast_wake_dir = self._wake_dir / "broadcast"
        self._turn = 0
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._conn: sqlite3.Connection | None = None
        self._doorbell: _wake.Doorbell | None = None
        self._broadcast_doorbell: _wake.Doorbell | None = None
        self._is_doorbell_broken = False
        self._check_location()
        with self._connection():  # fail fast on a bad path, and create the schema
            pass

    # -- publishing -----------------------------------------------------------
    def _publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """Store ``messages`` in one transaction, then wake waiting consumers once."""
        now = self.clock.time()
        rows = [(m.queue, clamp_priority(m.priority), m.eta or now, m.body) for m in messages]
        self._write(lambda conn: conn.executemany(_INSERT, rows))
        self._ring()

    # -- consuming ------------------------------------------------------------
    def fetch(self, queues: Sequence[str], limit: int, timeout: float) -> list[Delivery]:
        """Lease up to ``limit`` due messages, waiting up to ``timeout`` for the first.

        Only one thread per instance should wait in ``fetch`` at a time (the
        doorbell wakes one waiter); concurrent callers stay correct but slower.
        """
        if limit < 1 or not queues:
            return []
        deadline = time.monotonic() + timeout
        doorbell = self._doorbell_for_wait() if timeout > 0 else None
        found: list[SQLiteDelivery] = _wait_for(
            lambda: self._lease(queues, limit), doorbell, deadline
        )
        return list(found)

    def _lease(self, queues: Sequence[str], limit: int) -> list[SQLiteDelivery]:
        now = self.clock.time()
        names = {f"q{i}": queue for i, queue in enumerate(queues)}
        marks = ",".join(f":{name}" for name in names)
        probe = f"SELECT 1 FROM chard_messages WHERE queue IN ({marks}) AND {_DUE} LIMIT 1"
        # A read first: idle polls never take the write lock from publishers.
        if not self._read(lambda c: c.execute(probe, {**names, "now": now}).fetchall()):
            return []
        turn, self._turn = self._turn, self._turn + 1
        params = {"owner": self.consumer_id, "now": now, "expires": now + self.lease_timeout}

        def lease(conn: sqlite3.Connection) -> list[SQLiteDelivery]:
            def take(queue: str, n: int) -> list[SQLiteDelivery]:
                rows = conn.execute(_LEASE, {**params, "queue": queue, "limit": n}).fetchall()
                # RETURNING order is unspecified; restore the queue order.
                return [SQLiteDelivery(self, r) for r in sorted(rows, key=lambda r: (r[5], r[0]))]

            return take_fairly(queues, limit, turn, take)

        found = self._write(lease)
        for delivery in found:
            if delivery.delivery_count > 1:
                logger.warning(
                    "Redelivering message %s from %r (delivery %d): a lease lapsed",
                    delivery._id,
                    delivery.queue,
                    delivery.delivery_count,
                )
        return found

    def heartbeat(self) -> None:
        """Extend every lease this instance holds by ``lease_timeout`` from now."""
        expires = self.clock.time() + self.lease_timeout
        self._write(
            lambda conn: conn.execute(
                "UPDATE chard_messages SET lease_expires = ? WHERE lease_owner = ?",
                (expires, self.consumer_id),
            )
        )

    def _take_over(self, consumer_id: str) -> list[Delivery]:
        """Re-lease the rows ``consumer_id`` owns, in one ``UPDATE ... RETURNING``."""
        params = {
            "dead": consumer_id,
            "owner": self.consumer_id,
            "expires": self.clock.time() + self.lease_timeout,
        }
        rows = self._write(lambda conn: conn.execute(_TAKE_OVER, params).fetchall())
        return [SQLiteDelivery(self, r) for r in sorted(rows, key=lambda r: (r[5], r[0]))]

    # -- broadcast channels ---------------------------------------------------
    def broadcast(self, channel: str, payload: bytes, *, maxlen: int | None = None) -> str:
        """Append ``payload`` to ``channel``'s log and prune it, then wake its readers."""
        params = {"channel": channel, "keep": maxlen or self.broadcast_maxlen}

        def append(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "INSERT INTO chard_broadcasts (channel, payload, created_at) VALUES (?, ?, ?)"
                " RETURNING id",
                (channel, payload, self.clock.time()),
            ).fetchone()
            conn.execute(_PRUNE_BROADCASTS, params)
            return int(row[0])

        cursor = self._write(append)
        _wake.ring(self._broadcast_wake_dir)
        return str(cursor)

    def broadcast_read(self, channel: str, after: str, timeout: float) -> list[tuple[str, bytes]]:
        """Read ``channel`` after ``after``, waiting on the broadcast doorbell when idle."""
        start = parse_sequence_cursor(after)
        sql = "SELECT id, payload FROM chard_broadcasts WHERE channel = ? AND id > ? ORDER BY id"

        def read() -> list[tuple[str, bytes]]:
            rows = self._read(lambda c: c.execute(sql, (channel, start)).fetchall())
            return [(str(i), bytes(p)) for i, p in rows]

        deadline = time.monotonic() + timeout
        doorbell = self._broadcast_doorbell_for_wait() if timeout > 0 else None
        return _wait_for(read, doorbell, deadline)

    def broadcast_tail(self, channel: str) -> str:
        sql = "SELECT max(id) FROM chard_broadcasts WHERE channel = ?"
        rows = self._read(lambda c: c.execute(sql, (channel,)).fetchall())
        return str(rows[0][0] or 0)

    # -- administration -------------------------------------------------------
    def purge(self, queue: str) -> int:
        sql = f"DELETE FROM chard_messages WHERE queue = :queue AND {_WAITING}"
        now = self.clock.time()
        return self._write(lambda c: c.execute(sql, {"queue": queue, "now": now}).rowcount)

    def queue_size(self, queue: str) -> int:
        sql = f"SELECT count(*) FROM chard_messages WHERE queue = :queue AND {_WAITING}"
        now = self.clock.time()
        rows = self._read(lambda c: c.execute(sql, {"queue": queue, "now": now}).fetchall())
        return int(rows[0][0])

    def delayed(self, queues: Sequence[str], limit: int = 100) -> list[DelayedMessage]:
        marks = ", ".join("?" for _ in queues)
        sql = (
            "SELECT queue, body, due_at, priority FROM chard_messages WHERE queue IN "
            f"({marks}) AND due_at > ? AND lease_expires IS NULL ORDER BY due_at LIMIT ?"
        )
        args = (*queues, self.clock.time(), limit)
        rows = self._read(lambda c: c.execute(sql, args).fetchall()) if queues else []
        return [DelayedMessage(q, bytes(b), float(due), int(p)) for q, b, due, p in rows]

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        sql = (
            "SELECT id, queue, body, reason, failed_at, delivery_count FROM chard_dead_letters"
            " ORDER BY failed_at, id LIMIT ?"
        )
        rows = self._read(lambda c: c.execute(sql, (limit,)).fetchall())
        return [DeadLetter(str(i), q, bytes(b), r, f, n) for i, q, b, r, f, n in rows]

    def redrive(self, dead_letter_id: str, body: bytes | None = None) -> bool:
        if not dead_letter_id.isdigit():
            return False
        now = self.clock.time()

        def move(conn: sqlite3.Connection) -> bool:
            rows = conn.execute(
                "DELETE FROM chard_dead_letters WHERE id = ? RETURNING queue, priority, body",
                (int(dead_letter_id),),
            ).fetchall()
            conn.executemany(
                _INSERT, [(q, p, now, b if body is None else body) for q, p, b in rows]
            )
            return bool(rows)

        if not self._write(move):
            return False
        self._ring()
        return True

    def close(self) -> None:
        """Close the connection and the doorbell; a later call reopens them."""
        self._check_fork()
        with FORK_GATE, self._lock:
            for doorbell in (self._doorbell, self._broadcast_doorbell):
                if doorbell is not None:
                    doorbell.close()
            self._doorbell = self._broadcast_doorbell = None
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # -- plumbing -------------------------------------------------------------
    def _check_location(self) -> None:
        """Create the database's directory, or say which path is wrong and how to fix it."""
        parent = self.path.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ImproperlyConfigured(
                f"cannot create directory {str(parent)!r} for the sqlite broker: "
                f"{exc.strerror}; point the broker URL at a writable location"
            ) from exc
        for path in (parent, self.path):
            if path.exists() and not os.access(path, os.W_OK):
                raise ImproperlyConfigured(
                    f"sqlite broker path {str(path)!r} is not writable; SQLite needs to write "
                    "the file and its directory (for the -wal file): fix the permissions "
                    "or point the broker URL elsewhere"
                )

    def _check_fork(self) -> None:
        """Drop state inherited through ``fork()``: never use the parent's handles."""
        if self._pid == os.getpid():
            return
        # The lock may have been held by a parent thread that does not exist here.
        self._lock = threading.Lock()
        if self._conn is not None:
            _INHERITED.append(self._conn)  # closing it here would corrupt the parent's locks
        for doorbell in (self._doorbell, self._broadcast_doorbell):
            if doorbell is not None:
                doorbell.abandon()
        self._doorbell = self._broadcast_doorbell = None
        self._conn, self._pid = None, os.getpid()
        self.consumer_id = uuid.uuid4().hex

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        self._check_fork()
        with FORK_GATE, self._lock:  # a fork waits for this use to end
            if self._conn is None:
                self._conn = self._connect()
            yield self._conn

    def _connect(self) -> sqlite3.Connection:
        try:
            # Autocommit: transactions are explicit, and no read snapshot is held.
            conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
            )
            if conn.execute("PRAGMA journal_mode").fetchall()[0][0].lower() != "wal":
                conn.execute("PRAGMA journal_mode = WAL").fetchall()
            conn.execute("PRAGMA synchronous = NORMAL")  # durable in WAL except on power loss
            conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise ImproperlyConfigured(
                f"cannot open the sqlite broker database {str(self.path)!r}: {exc}; "
                "check that the path is a writable SQLite file"
            ) from exc
        logger.debug("Opened sqlite broker %s in process %d", self.path, os.getpid())
        return conn

    def _read(self, action: Callable[[sqlite3.Connection], T]) -> T:
        with self._connection() as conn, _errors(self.path):
            return action(conn)

    def _write(self, action: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``action`` in one write transaction (taken up front: no upgrade deadlocks)."""
        with self._connection() as conn, _errors(self.path):
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = action(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # SQLite may have rolled back already
                    conn.execute("ROLLBACK")
                raise
            return result

    def _doorbell_for_wait(self) -> _wake.Doorbell | None:
        """Return this instance's doorbell, binding it on first use (None: poll only)."""
        self._check_fork()
        if self._doorbell is None:
            self._doorbell = self._bind_doorbell(self._wake_dir)
        return self._doorbell

    def _broadcast_doorbell_for_wait(self) -> _wake.Doorbell | None:
        """Return the doorbell that broadcasts ring, binding it on first use (None: poll only)."""
        self._check_fork()
        if self._broadcast_doorbell is None:
            self._broadcast_doorbell = self._bind_doorbell(self._broadcast_wake_dir)
        return self._broadcast_doorbell

    def _bind_doorbell(self, directory: Path) -> _wake.Doorbell | None:
        if self._is_doorbell_broken:
            return None
        try:
            return _wake.Doorbell(directory)
        except OSError as exc:
            self._is_doorbell_broken = True
            logger.warning(
                "Cannot create a wake-up socket in %s (%s); the sqlite broker will poll",
                directory,
                exc,
            )
            return None

    def _ring(self) -> None:
        _wake.ring(self._wake_dir)


def _wait_for(
    attempt: Callable[[], list[T]], doorbell: _wake.Doorbell | None, deadline: float
) -> list[T]:
    """Call ``attempt`` until it finds something or ``deadline`` passes; nap on ``doorbell``.

    Between attempts the pause grows from POLL_INTERVAL_MIN to POLL_INTERVAL_MAX, and
    a ring cuts it short (and starts the back-off again): a rung doorbell means new
    rows, and no doorbell (none could be bound) means plain polling.
    """
    if doorbell is not None:
        doorbell.drain()  # rings from before the first attempt add nothing
    interval = POLL_INTERVAL_MIN
    while True:
        found = attempt()
        remaining = deadline - time.monotonic()
        if found or remaining <= 0:
            return found
        pause = min(interval, remaining)
        if doorbell is not None and doorbell.wait(pause):
            interval = POLL_INTERVAL_MIN  # a publish: look now, and soon again
        else:
            if doorbell is None:
                time.sleep(pause)
            interval = min(interval * 2, POLL_INTERVAL_MAX)


#: Connections opened before a fork, kept referenced in the child so that garbage
#: collection never closes them there (closing runs SQLite code on the parent's state).
_INHERITED: list[sqlite3.Connection] = []


@contextmanager
def _errors(path: Path) -> Iterator[None]:
    """Turn SQLite's errors into chard's: busy or I/O trouble is worth a retry."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        raise BrokerConnectionError(f"sqlite broker {str(path)!r} failed: {exc}") from exc
    except sqlite3.DatabaseError as exc:
        raise BrokerError(f"sqlite broker {str(path)!r} failed: {exc}") from exc
