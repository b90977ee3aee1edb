"""The PostgreSQL broker: queues as rows, leased with ``FOR UPDATE SKIP LOCKED``.

Tables, in the schema the URL names (``?schema=``, default ``public``); see the README's
PostgreSQL section:

* ``chard_messages``: one row per message from publish to ack. ``not_before`` holds the
  ETA (or the publish time). Leasing sets ``lease_owner`` (the instance's consumer id), a
  fresh ``lease_token`` and ``lease_expires`` and counts ``delivery_count``, in one
  ``UPDATE`` over rows picked ``FOR UPDATE SKIP LOCKED``: consumers never wait for each
  other, nor lease a row twice. A lapsed lease makes the row due again. Settling matches
  ``(id, lease_token)``, so a consumer whose lease lapsed cannot touch the row once
  another holds it. Order: ``priority`` (0 first), then ``id`` (publish order).
* ``chard_dead_letters``: messages set aside, with reason and count, until re-driven.
* ``chard_broadcasts``: the broadcast logs; ``id`` is the cursor. Appends to one channel
  are serialised by an advisory lock, so ids are handed out in commit order and a reader
  never skips an entry that commits late; pruned to ``broadcast_maxlen`` per channel.

Times come from the database's clock (``now()``), so the machines of a cluster need not
agree on theirs; an ETA is the publisher's Unix time.

Waiting: publishes, requeues and re-drives ``pg_notify`` the queue name on the channel
``chard.<schema>.messages`` (broadcasts on ``….broadcasts``), inside their transaction. A
consumer with nothing to lease asks once when the next message or lapsing lease falls due,
then sleeps on its :class:`~chard._postgres.listener.Listener` until a notification names
one of its queues or that time comes. Its next ``fetch`` skips the query while nothing
was heard and nothing fell due, and ``heartbeat`` skips its update while nothing is held:
an idle worker sends the server no query at all.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from chard._postgres.database import Database, Row, Tx, run_on
from chard._postgres.listener import Listener, Wanted
from chard.brokers._postgres_sql import (
    DURABLE,
    INSERT,
    INSERT_MANY,
    LEASE,
    MIGRATIONS,
    MINE,
    NEXT_DUE,
    PRUNE_BROADCASTS,
    TAKE_OVER,
    WAITING,
)
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
from chard.exceptions import BrokerConnectionError, BrokerError

logger = logging.getLogger(__name__)

#: The application's connection that publishes go through, inside ``enlist``.
_ENLISTED: ContextVar[Any] = ContextVar("chard_postgres_enlisted", default=None)
#: Messages from which one publish loads them with COPY (about 3x faster for a big group)
#: instead of one INSERT statement (one round trip instead of four for a few).
COPY_THRESHOLD = 64
#: Seconds a fetch waits for its listener's first LISTEN before it polls instead.
LISTEN_READY_TIMEOUT = 5.0


class PostgresDelivery(LeasedRow):
    """A leased row; settles only while this lease's token is still on it."""

    def __init__(self, broker: PostgresBroker, row: Row) -> None:
        super().__init__(row)
        self._broker = broker

    def ack(self) -> None:
        self._settle(lambda tx: tx.run("DELETE FROM {s}.chard_messages WHERE " + MINE, self._key))

    def reject(self, requeue: bool = False) -> None:
        if not requeue:
            self.ack()
            return

        # Back to waiting, its count taken back, its queue notified: one statement.
        sql = (
            "WITH back AS (UPDATE {s}.chard_messages SET lease_owner = NULL, lease_token = NULL,"
            " lease_expires = NULL, delivery_count = delivery_count - 1 WHERE "
            + MINE
            + " RETURNING queue) SELECT pg_notify(%s, queue) FROM back"
        )
        channel = self._broker.messages_channel
        self._settle(lambda tx: tx.rows(sql, (*self._key, channel)))

    def dead_letter(self, reason: str) -> None:
        sql = (
            "WITH moved AS (DELETE FROM {s}.chard_messages WHERE " + MINE + " RETURNING"
            " queue, priority, body, delivery_count) INSERT INTO {s}.chard_dead_letters"
            " (queue, priority, body, reason, delivery_count)"
            " SELECT queue, priority, body, %s, delivery_count FROM moved"
        )
        self._settle(lambda tx: tx.run(sql, (*self._key, reason)))

    def _settle(self, action: Callable[[Tx], object]) -> None:
        # Settling twice is a no-op; a failed write (database down) may be retried.
        if self._settled:
            return
        self._broker.db.autocommit(action)
        self._settled = True
        self._broker._release([self._id])


class PostgresBroker(Broker):
    """Queues in PostgreSQL tables: for any number of machines sharing one database.

    Options:
        lease_timeout: seconds before a dead consumer's messages are redelivered.
        schema: the schema of chard's tables (also ``?schema=`` in the URL).
        synchronous_commit: for leases and acks (default ``"off"``, see
            :class:`~chard._postgres.database.Database`); ``"on"`` makes each one wait for
            its WAL flush too. Publishes always wait.
    """

    def __init__(self, url: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(url, options)
        self.db = Database(
            url,
            self.options,
            role="broker",
            connection_error=BrokerConnectionError,
            error=BrokerError,
            # Leases and acks: a crash may undo the last ones (redelivery, at-least-once);
            # what must survive (publish, broadcast, re-drive) commits with DURABLE.
            synchronous_commit=str(self.options.get("synchronous_commit", "off")),
        )
        self.messages_channel = self.db.channel("messages")
        self.broadcasts_channel = self.db.channel("broadcasts")
        self._turn = 0
        self._state_lock = threading.Lock()
        #: Ids of the rows this instance leased and has not settled: heartbeat's work.
        self._held: set[int] = set()
        self._listener: Listener | None = None
        #: After an empty look: (queues, listener seq before it, monotonic time something is due).
        self._idle: tuple[tuple[str, ...], int, float] | None = None
        #: After an empty broadcast read: (channel, cursor, listener seq before it).
        self._broadcast_idle: tuple[str, int, int] | None = None
        self._pid = os.getpid()
        try:
            self.db.ensure_schema("broker", MIGRATIONS)
        except BaseException:
            self.db.close()
            raise

    # -- publishing -------------------------------------------------------------------
    def _publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """Insert ``messages`` in one transaction, notifying their queues at commit.

        Inside :meth:`enlist`, on the application's connection and in its transaction.
        """
        rows = [(m.queue, clamp_priority(m.priority), m.eta, m.body) for m in messages]
        enlisted = _ENLISTED.get()
        if enlisted is not None:
            notify = "SELECT pg_notify(%s, %s)"
            queues = dict.fromkeys(m.queue for m in messages)
            run_on(
                enlisted,
                self.db.target.quoted_schema,
                [(INSERT, row) for row in rows]
                + [(notify, (self.messages_channel, q)) for q in queues],
            )
            return

        if len(rows) < COPY_THRESHOLD:
            columns = [list(column) for column in zip(*rows, strict=True)]

            def insert_few(tx: Tx) -> None:
                tx.run(DURABLE)
                tx.rows(INSERT_MANY, (*columns, self.messages_channel))

            self.db.transaction(insert_few)
            return
        due_now = [(queue, priority, body) for queue, priority, eta, body in rows if eta is None]
        later = [row for row in rows if row[2] is not None]

        def insert(tx: Tx) -> None:
            tx.run(DURABLE)
            tx.copy("chard_messages", ("queue", "priority", "body"), due_now)
            if later:
                columns = [list(column) for column in zip(*later, strict=True)]
                tx.rows(INSERT_MANY, (*columns, self.messages_channel))
            tx.notify(self.messages_channel, [m.queue for m in messages])

        self.db.transaction(insert)

    @contextmanager
    def enlist(self, connection: Any) -> Iterator[None]:
        """Publish through ``connection`` (the application's) in this context; see the base."""
        token = _ENLISTED.set(connection)
        try:
            yield
        finally:
            _ENLISTED.reset(token)

    # -- consuming ----------------------------------------------------------------------
    def fetch(self, queues: Sequence[str], limit: int, timeout: float) -> list[Delivery]:
        """Lease up to ``limit`` due messages, sleeping on notifications until one comes.

        Only one thread per instance should wait in ``fetch`` at a time (the idle
        bookkeeping is per instance); concurrent callers stay correct.
        """
        if limit < 1 or not queues:
            return []
        deadline = time.monotonic() + timeout
        names = tuple(queues)
        listener = self._listener_for_wait() if timeout > 0 else None

        def wanted(channel: str, payload: str) -> bool:
            return channel == self.messages_channel and payload in names

        while True:
            seq = listener.seq if listener is not None else 0
            if not self._can_skip_look(listener, names, wanted):
                found, due_in = self._lease(names, limit)
                if found:
                    self._idle = None
                    return list(found)
                self._idle = (names, seq, time.monotonic() + due_in)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            _, since, due_at = self._idle or (names, seq, deadline)
            pause = min(remaining, max(due_at - time.monotonic(), 0.0))
            if listener is None:
                time.sleep(min(pause, 0.5))
            elif pause > 0:
                listener.wait(since, pause, wanted)

    def _can_skip_look(
        self, listener: Listener | None, names: tuple[str, ...], wanted: Wanted
    ) -> bool:
        """Return whether the last empty look still holds: nothing heard, nothing fallen due."""
        idle = self._idle
        if listener is None or idle is None or idle[0] != names or not listener.is_up:
            return False
        return time.monotonic() < idle[2] and not listener.has_news(idle[1], wanted)

    def _lease(self, queues: tuple[str, ...], limit: int) -> tuple[list[PostgresDelivery], float]:
        """Lease what is due; when nothing is, also say in how many seconds something will be."""
        turn, self._turn = self._turn, self._turn + 1
        params = {"owner": self.consumer_id, "lease": self.lease_timeout}

        def lease(tx: Tx) -> tuple[list[PostgresDelivery], float]:
            def take(queue: str, n: int) -> list[PostgresDelivery]:
                token = secrets.randbits(62)
                rows = tx.rows(LEASE, {**params, "queue": queue, "limit": n, "token": token})
                # RETURNING order is unspecified; restore the queue order.
                return [PostgresDelivery(self, r) for r in sorted(rows, key=lambda r: (r[5], r[0]))]

            found = take_fairly(queues, limit, turn, take)
            if found:
                return found, 0.0
            (due_in,) = tx.rows(NEXT_DUE, (list(queues),))[0]
            # Nothing at all: sleep until notified. Something locked by a concurrent lease
            # (due now): look again soon, once it is either settled or leased.
            return [], float("inf") if due_in is None else max(float(due_in), 0.01)

        found, due_in = self.db.autocommit(lease)
        self._hold(d._id for d in found)
        for delivery in found:
            if delivery.delivery_count > 1:
                logger.warning(
                    "Redelivering message %s from %r (delivery %d): a lease lapsed",
                    delivery._id,
                    delivery.queue,
                    delivery.delivery_count,
                )
        return found, due_in

    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Delete every unsettled one of ``deliveries`` in one statement."""
        mine = [d for d in deliveries if isinstance(d, PostgresDelivery) and not d._settled]
        others = [d for d in deliveries if not isinstance(d, PostgresDelivery)]
        if mine:
            self.db.rows(
                "DELETE FROM {s}.chard_messages WHERE (id, lease_token) IN"
                " (SELECT * FROM unnest(%s::bigint[], %s::bigint[]))",
                ([d._id for d in mine], [d._token for d in mine]),
            )
            for delivery in mine:
                delivery._settled = True
            self._release(d._id for d in mine)
        super().ack_many(others)

    def heartbeat(self) -> None:
        """Extend every lease this instance holds; no query when it holds none."""
        self._check_fork()
        with self._state_lock:
            if not self._held:
                return
        self.db.rows(
            "UPDATE {s}.chard_messages SET lease_expires = now() + make_interval(secs => %s)"
            " WHERE lease_owner = %s",
            (self.lease_timeout, self.consumer_id),
        )

    def _take_over(self, consumer_id: str) -> list[Delivery]:
        """Re-lease the rows ``consumer_id`` owns, in one ``UPDATE ... RETURNING``."""
        params = {
            "dead": consumer_id,
            "owner": self.consumer_id,
            "lease": self.lease_timeout,
            "token": secrets.randbits(62),
        }
        rows = self.db.rows(TAKE_OVER, params)
        self._hold(r[0] for r in rows)
        return [PostgresDelivery(self, r) for r in sorted(rows, key=lambda r: (r[5], r[0]))]

    def _hold(self, ids: Any) -> None:
        with self._state_lock:
            self._held.update(ids)

    def _release(self, ids: Any) -> None:
        with self._state_lock:
            self._held.difference_update(ids)

    # -- broadcast channels -------------------------------------------------------------
    def broadcast(self, channel: str, payload: bytes, *, maxlen: int | None = None) -> str:
        """Append ``payload`` to ``channel``'s log and prune it; readers hear it at commit."""

        def append(tx: Tx) -> int:
            tx.run(DURABLE)
            tx.run(
                "SELECT pg_advisory_xact_lock(hashtext(%s))",
                (f"chard-broadcast:{self.db.schema}:{channel}",),
            )
            rows = tx.rows(
                "INSERT INTO {s}.chard_broadcasts (channel, payload) VALUES (%s, %s) RETURNING id",
                (channel, payload),
            )
            keep = maxlen or self.broadcast_maxlen
            tx.run(PRUNE_BROADCASTS, {"channel": channel, "keep": keep})
            tx.notify(self.broadcasts_channel, [channel])
            return int(rows[0][0])

        return str(self.db.transaction(append))

    def broadcast_read(self, channel: str, after: str, timeout: float) -> list[tuple[str, bytes]]:
        """Read ``channel`` after ``after``; when there is nothing, sleep until a broadcast."""
        start = parse_sequence_cursor(after)
        deadline = time.monotonic() + timeout
        listener = self._listener_for_wait() if timeout > 0 else None

        def wanted(name: str, payload: str) -> bool:
            return name == self.broadcasts_channel and payload == channel

        while True:
            seq = listener.seq if listener is not None else 0
            idle = self._broadcast_idle
            is_unchanged = (
                listener is not None
                and listener.is_up
                and idle is not None
                and idle[:2] == (channel, start)
                and not listener.has_news(idle[2], wanted)
            )
            if not is_unchanged:
                rows = self.db.rows(
                    "SELECT id, payload FROM {s}.chard_broadcasts WHERE channel = %s AND id > %s"
                    " ORDER BY id",
                    (channel, start),
                )
                if rows:
                    self._broadcast_idle = None
                    return [(str(i), bytes(p)) for i, p in rows]
                self._broadcast_idle = (channel, start, seq)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            since = self._broadcast_idle[2] if self._broadcast_idle else seq
            if listener is None:
                time.sleep(min(remaining, 0.5))
            else:
                listener.wait(since, remaining, wanted)

    def broadcast_tail(self, channel: str) -> str:
        rows = self.db.rows(
            "SELECT max(id) FROM {s}.chard_broadcasts WHERE channel = %s", (channel,)
        )
        return str(rows[0][0] or 0)

    # -- administration -----------------------------------------------------------------
    def purge(self, queue: str) -> int:
        sql = f"DELETE FROM {{s}}.chard_messages WHERE queue = %s AND {WAITING}"
        return self.db.autocommit(lambda tx: tx.run(sql, (queue,)))

    def queue_size(self, queue: str) -> int:
        sql = f"SELECT count(*) FROM {{s}}.chard_messages WHERE queue = %s AND {WAITING}"
        return int(self.db.rows(sql, (queue,))[0][0])

    def delayed(self, queues: Sequence[str], limit: int = 100) -> list[DelayedMessage]:
        """List countdown/ETA rows not yet due and not leased, soonest first (one query)."""
        if not queues:
            return []
        rows = self.db.rows(
            "SELECT queue, body, extract(epoch FROM not_before), priority"
            " FROM {s}.chard_messages WHERE queue = ANY(%s) AND not_before > now()"
            " AND lease_owner IS NULL ORDER BY not_before, id LIMIT %s",
            (list(queues), limit),
        )
        return [DelayedMessage(q, bytes(b), float(due), int(p)) for q, b, due, p in rows]

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        rows = self.db.rows(
            "SELECT id, queue, body, reason, extract(epoch FROM failed_at), delivery_count"
            " FROM {s}.chard_dead_letters ORDER BY failed_at, id LIMIT %s",
            (limit,),
        )
        return [DeadLetter(str(i), q, bytes(b), r, float(f), n) for i, q, b, r, f, n in rows]

    def redrive(self, dead_letter_id: str, body: bytes | None = None) -> bool:
        if not dead_letter_id.isdigit():
            return False

        def move(tx: Tx) -> bool:
            tx.run(DURABLE)
            rows = tx.rows(
                "WITH moved AS (DELETE FROM {s}.chard_dead_letters WHERE id = %s"
                " RETURNING queue, priority, body)"
                " INSERT INTO {s}.chard_messages (queue, priority, body)"
                " SELECT queue, priority, coalesce(%s::bytea, body) FROM moved RETURNING queue",
                (int(dead_letter_id), body),
            )
            tx.notify(self.messages_channel, [r[0] for r in rows])
            return bool(rows)

        return self.db.transaction(move)

    def close(self) -> None:
        """Close the connection and the listener; a later call reopens them."""
        listener, self._listener = self._listener, None
        self._idle = self._broadcast_idle = None
        if listener is not None:
            listener.close()
        self.db.close()

    # -- plumbing -------------------------------------------------------------------------
    def _listener_for_wait(self) -> Listener | None:
        """Return this process's listener, started on first use (None: it could not start)."""
        self._check_fork()
        with self._state_lock:  # the consume and the revocation threads may both get here
            listener = self._listener
            if listener is not None:
                return listener  # while its connection is down, its waits return soon: polling
            self._idle = self._broadcast_idle = None
            listener = self._listener = Listener(
                self.db, [self.messages_channel, self.broadcasts_channel], purpose="listen"
            )
        if not listener.wait_ready(LISTEN_READY_TIMEOUT):
            logger.warning("Cannot LISTEN on %s yet; polling meanwhile", self.db.target.redacted)
        return listener

    def _check_fork(self) -> None:
        """In a forked child, forget the parent's listener, leases and identity."""
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._listener = None  # its thread is not in this process; the parent closes it
        self._idle = self._broadcast_idle = None
        self._state_lock = threading.Lock()
        self._held = set()
        self.consumer_id = uuid.uuid4().hex
