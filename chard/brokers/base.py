"""The broker interface: queues of opaque envelopes, with leases, acks and dead letters.

A broker knows nothing of tasks. It moves envelope bytes (see
:mod:`chard.protocol.message`) between named queues and consumers, and guarantees:

* **At-least-once.** A fetched message is *leased* to this broker instance (one
  consumer). It leaves the queue only on :meth:`Delivery.ack` or
  :meth:`Delivery.dead_letter`. If the consumer dies, its leases lapse after
  ``lease_timeout`` seconds and the messages are delivered again, unless a
  supervisor that saw it die takes them over at once (:meth:`Broker.take_over`).
* **Slow is not dead.** While the consumer lives, :meth:`Broker.heartbeat` (called
  by the worker every ``lease_timeout / 4`` seconds or so) extends every lease it
  holds, so a long task is never handed to a second worker (Celery's Redis
  visibility-timeout bug, celery#2481).
* **Counted deliveries.** :attr:`Delivery.delivery_count` is 1 on first delivery
  and grows each time a lease lapses; the worker dead-letters a message past
  ``task_max_deliveries`` instead of looping on a poison pill.
* **Future work stays in the broker.** ``publish(..., eta=)`` stores a not-before
  time; the message is invisible to :meth:`Broker.fetch` until then.
* **Priority.** 0 is the highest priority and 9 the lowest (Celery's Redis
  convention); within one priority, first in first out. A broker may group
  adjacent priorities into levels: the Redis broker keeps kombu's four lists
  (0-2, 3-5, 6-8, 9) so that Celery and chard share queues, and serves each
  level in publish order. The RabbitMQ broker is the exception
  (:attr:`Broker.higher_priority_first`): there, as Celery documents for RabbitMQ, a
  higher number is more urgent, so that Celery and chard agree on shared queues.
* **Broadcast channels.** Besides queues (each message to one consumer), a broker
  keeps a durable, bounded log per broadcast channel that every reader sees whole
  (revocations, remote control; events later): :meth:`Broker.broadcast`
  appends, :meth:`Broker.broadcast_read` reads after a cursor, blocking until
  something comes. A reader that starts late, or restarts, reads the log from
  ``"0"`` and misses nothing still kept (the newest ``broadcast_maxlen`` entries).

Thread safety: a broker instance may be called from several threads of one process
(the worker's consume loop and its heartbeat timer). It must not be shared across
``fork()``; each process opens its own (the app does this).
"""

from __future__ import annotations

import logging
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from chard.exceptions import ImproperlyConfigured

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Default lease: how long a dead consumer's messages stay invisible (seconds).
DEFAULT_LEASE_TIMEOUT = 10.0
#: Entries a broadcast channel keeps by default (option ``broadcast_maxlen``).
DEFAULT_BROADCAST_MAXLEN = 10_000
#: The cursor before the oldest entry of every broadcast channel.
BROADCAST_START = "0"


@dataclass(frozen=True)
class OutgoingMessage:
    """One message to publish: where, what, how urgent and from when."""

    queue: str
    body: bytes
    priority: int = 0
    #: Not-before time as a Unix timestamp, or None for "now".
    eta: float | None = None
    #: RabbitMQ only (others route by ``queue``): the exchange and routing key a send
    #: asked for (``task_routes``, ``apply_async(exchange=, routing_key=)``). None: as the
    #: queue's declaration says (``task_queues``); ``""``: straight to ``queue`` alone (a
    #: re-publish of one queue's message must not fan out again).
    exchange: str | None = None
    routing_key: str | None = None


@dataclass(frozen=True)
class DelayedMessage:
    """A countdown/ETA message the broker holds until it falls due (``inspect scheduled``)."""

    queue: str
    body: bytes
    #: When it falls due, as a Unix timestamp.
    eta: float
    #: Its priority (Redis keeps only kombu's level: 0, 3, 6 or 9).
    priority: int = 0


@dataclass(frozen=True)
class DeadLetter:
    """A message set aside: never executed again unless re-driven."""

    id: str
    queue: str
    body: bytes
    reason: str
    #: Unix timestamp when it was set aside.
    failed_at: float
    delivery_count: int


class Delivery(ABC):
    """A message leased to this consumer, until acked, rejected or dead-lettered.

    Settling a delivery twice is a no-op, and settling one whose lease has lapsed
    (and that another consumer now holds) must not touch the other's lease.
    """

    #: The envelope bytes exactly as published.
    body: bytes
    #: Queue it was fetched from.
    queue: str
    #: 1 on the first delivery; +1 for every lapsed lease.
    delivery_count: int
    #: Deliveries the queue itself allows (RabbitMQ's ``x-delivery-limit`` + 1), or None;
    #: the worker dead-letters past the lower of this and ``task_max_deliveries``.
    delivery_limit: int | None = None

    @abstractmethod
    def ack(self) -> None:
        """Remove the message for good: its work is done."""

    @abstractmethod
    def reject(self, requeue: bool = False) -> None:
        """Give the message up.

        Args:
            requeue: put it back for immediate redelivery *without* counting this
                delivery (warm shutdown returns unstarted work this way). Without
                requeue the message is dropped.
        """

    @abstractmethod
    def dead_letter(self, reason: str) -> None:
        """Move the message to the dead-letter store with ``reason``; it will not run again."""


class LeasedRow(Delivery):
    """A message leased from a table (SQLite, PostgreSQL) by its row id and a lease token.

    The token changes whenever another consumer takes the row over, so a settle that
    names ``(id, token)`` can only touch this lease. Subclasses settle through their own
    database; the row's shape is shared: ``(id, token, queue, body, delivery_count,
    priority)``, the columns both brokers' lease statements return.
    """

    def __init__(self, row: Sequence[Any]) -> None:
        self._id: int = row[0]
        self._token: int = row[1]
        self.queue = row[2]
        self.body = bytes(row[3])
        self.delivery_count = row[4]
        self.priority: int = row[5]
        self._settled = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} id={self._id} queue={self.queue!r} n={self.delivery_count}>"

    @property
    def _key(self) -> tuple[int, int]:
        return (self._id, self._token)


class Broker(ABC):
    """A message broker behind one small interface; see the module docstring for guarantees."""

    #: False: 0 is the most urgent priority (Celery on Redis). True: a larger number is
    #: more urgent (Celery on RabbitMQ, where the queue's ``x-max-priority`` caps it).
    higher_priority_first: ClassVar[bool] = False

    def __init__(self, url: str, options: Mapping[str, Any] | None = None) -> None:
        self.url = url
        self.options = dict(options or {})
        self.lease_timeout = float(self.options.get("lease_timeout", DEFAULT_LEASE_TIMEOUT))
        maxlen = int(self.options.get("broadcast_maxlen", DEFAULT_BROADCAST_MAXLEN))
        if maxlen < 1:
            raise ImproperlyConfigured(
                f"broadcast_maxlen must be >= 1, got {maxlen}; set it in broker_transport_options"
            )
        #: Entries kept per broadcast channel: older ones are dropped as new ones come.
        self.broadcast_maxlen = maxlen
        #: The identity this instance's leases are held under: unique per instance, so
        #: two processes (or two instances in one) never share leases. A supervisor that
        #: saw the process of an instance die passes it to :meth:`take_over`.
        self.consumer_id = uuid.uuid4().hex

    def publish(self, messages: OutgoingMessage | Sequence[OutgoingMessage]) -> None:
        """Store one message, or several in one round-trip, durably before returning.

        Several are stored all or none, and consumers see them together: a group's
        members go out this way. The one entry point, so that every transport is
        batched the same way; a transport implements :meth:`_publish`.

        Raises:
            BrokerConnectionError: the broker cannot be reached.
        """
        if isinstance(messages, OutgoingMessage):
            messages = (messages,)
        if messages:
            self._publish(messages)

    @abstractmethod
    def _publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """Store a non-empty sequence of messages, all or none, in one round-trip."""

    def publisher(
        self,
        queue: str,
        priority: int = 0,
        exchange: str | None = None,
        routing_key: str | None = None,
    ) -> Callable[[bytes], None]:
        """Return a function that publishes one body to ``queue``, ready now, as :meth:`publish`.

        For a caller that sends many bodies to the same place (a task's plain ``delay()``):
        a transport may prepare once what every such publish shares (Redis packs its
        ``LPUSH`` but for the body). The function has :meth:`publish`'s guarantees and
        errors; it belongs to this broker instance (not across ``fork()``).
        """
        return _Publisher(self, queue, priority, exchange, routing_key)

    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Ack several deliveries, in one round-trip where the transport allows.

        The worker settles the jobs that finished together this way. Same guarantees as
        :meth:`Delivery.ack` on each: settled ones and lapsed leases are no-ops.
        """
        for delivery in deliveries:
            delivery.ack()

    def ack_and_fetch(
        self, acks: Sequence[Delivery], queues: Sequence[str], limit: int, timeout: float
    ) -> list[Delivery]:
        """Ack ``acks`` (as :meth:`ack_many`), then :meth:`fetch`.

        A worker's fetcher hands over the acks that are waiting when it fetches, so that a
        transport able to carry both in one round trip (Redis: the fetch script) saves one.
        If it raises, the acks may or may not have been made: the caller acks them again
        (a settled delivery or a lapsed lease makes that a no-op).
        """
        if acks:
            self.ack_many(acks)
        return self.fetch(queues, limit, timeout)

    @abstractmethod
    def fetch(self, queues: Sequence[str], limit: int, timeout: float) -> list[Delivery]:
        """Lease up to ``limit`` due messages from ``queues``.

        Blocks up to ``timeout`` seconds for the first message without busy-waiting
        (blocking read, notification, or a back-off of at most ~1 s between checks),
        and returns ``[]`` if none came. Several queues are served fairly: one busy
        queue must not starve the others.
        """

    @abstractmethod
    def heartbeat(self) -> None:
        """Extend the lease of every message this instance holds; also recover lapsed leases.

        Called periodically by the worker while it lives. Idempotent.
        """

    def take_over(self, consumer_id: str) -> list[Delivery]:
        """Lease to this instance every message that consumer ``consumer_id`` holds; return them.

        For a consumer known to be dead (its supervisor saw the process exit), so that its
        messages can be settled at once instead of lapsing after ``lease_timeout``. Each one
        it still holds, lapsed or not, gets a fresh lease here (a new tag, expiring
        ``lease_timeout`` from now) with its body, queue, priority and ``delivery_count``
        unchanged, because the same delivery goes on: the caller, who knows which message
        was running, decides its fate (``reject(requeue=True)`` returns an unstarted one
        uncounted; ``ack`` or ``dead_letter`` the one that killed it). A message another
        consumer took back after a lapse is not taken: it is that consumer's now (Redis
        takes lapsed leases back on any consumer's fetch or heartbeat).

        The returned deliveries are this instance's, like fetched ones: :meth:`heartbeat`
        extends them and settling them works as usual, while settling the dead consumer's
        own deliveries (a late call through them) becomes a no-op.

        Atomic. An unknown consumer, one that holds nothing, or a second call gets
        ``[]``. Order is unspecified. Thread-safe. Never pass a consumer that may still
        be running: its messages would run twice.

        Args:
            consumer_id: the dead instance's :attr:`consumer_id`.

        Raises:
            ValueError: ``consumer_id`` is this instance's own.
            BrokerConnectionError: the broker cannot be reached.
            NotImplementedError: this broker cannot take leases over; a dead consumer's
                messages then come back when their leases lapse.
        """
        if consumer_id == self.consumer_id:
            raise ValueError(
                f"cannot take over this instance's own leases ({consumer_id!r}); pass the "
                "consumer_id of a dead broker instance"
            )
        taken = self._take_over(consumer_id)
        if taken:
            logger.info(
                "Took over %d message(s) leased to dead consumer %s", len(taken), consumer_id
            )
        return taken

    def _take_over(self, consumer_id: str) -> list[Delivery]:
        """Lease ``consumer_id``'s messages to this instance, atomically; see :meth:`take_over`."""
        raise NotImplementedError(
            f"the {type(self).__name__} broker cannot take over the leases of consumer "
            f"{consumer_id!r}; a dead worker process's messages are redelivered when their "
            f"leases lapse (lease_timeout={self.lease_timeout:g} s)"
        )

    def note_lost(self, task_id: str) -> None:  # noqa: B027 - optional hook
        """Hear that a consumer process died running ``task_id``; its supervisor saw it.

        Called instead of settling that message when :meth:`take_over` is not implemented.
        A broker that gives a dead consumer's messages back by itself (RabbitMQ, when the
        connection closes) counts the death against this message only, not against the
        ones the dead process had fetched ahead. The default does nothing.
        """

    @abstractmethod
    def purge(self, queue: str) -> int:
        """Delete every waiting (unleased) message in ``queue``; return how many."""

    @abstractmethod
    def queue_size(self, queue: str) -> int:
        """Return how many messages wait in ``queue`` (due or not, excluding leased ones)."""

    @abstractmethod
    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Return up to ``limit`` dead letters, oldest first."""

    @abstractmethod
    def redrive(self, dead_letter_id: str, body: bytes | None = None) -> bool:
        """Put a dead letter back on its queue with a fresh delivery count; False if unknown.

        ``body`` replaces the stored message, e.g. with the worker's own death count
        (a header) reset, so a re-driven poison pill gets its full set of deliveries.
        """

    def delayed(self, queues: Sequence[str], limit: int = 100) -> list[DelayedMessage]:
        """Return up to ``limit`` messages of ``queues`` held for a future ETA, soonest first.

        For ``inspect scheduled``: read only, nothing is leased or moved. A broker
        with a huge delayed set may look at only its soonest part (Redis: the first
        10,000 entries of every queue together).

        Raises:
            BrokerConnectionError: the broker cannot be reached.
            NotImplementedError: this broker cannot list them.
        """
        raise NotImplementedError(
            f"the {type(self).__name__} broker cannot list its countdown/ETA messages"
        )

    # -- broadcast channels: optional, so a third-party broker without them still runs tasks --
    def broadcast(self, channel: str, payload: bytes, *, maxlen: int | None = None) -> str:
        """Append ``payload`` to the log of ``channel`` durably; return the entry's cursor.

        Every reader of the channel sees every entry (unlike a queue). The log keeps
        at least the newest ``maxlen`` (default ``broadcast_maxlen``) entries and not
        many more (a broker may trim lazily: Redis drops whole stream nodes of up to
        100 entries); remote control keeps its channels short this way. Thread-safe.

        Raises:
            BrokerConnectionError: the broker cannot be reached.
            NotImplementedError: this broker has no broadcast channels.
        """
        raise NotImplementedError(self._no_broadcast())

    def broadcast_read(self, channel: str, after: str, timeout: float) -> list[tuple[str, bytes]]:
        """Return ``(cursor, payload)`` of the entries of ``channel`` after cursor ``after``.

        Entries come oldest first. ``after`` is ``"0"`` (:data:`BROADCAST_START`) for
        everything kept, or a cursor returned by this method, :meth:`broadcast` or
        :meth:`broadcast_tail` (cursors are opaque strings; pass the last one back).
        When there is nothing newer, blocks up to ``timeout`` seconds without
        busy-waiting and returns ``[]`` if nothing came. Thread-safe, but meant for
        one reading thread per instance.

        Raises:
            BrokerConnectionError: the broker cannot be reached.
            NotImplementedError: this broker has no broadcast channels.
        """
        raise NotImplementedError(self._no_broadcast())

    def broadcast_tail(self, channel: str) -> str:
        """Return the cursor of the newest entry of ``channel`` (``"0"`` when empty).

        Reading after it gets only what is broadcast from now on.

        Raises:
            BrokerConnectionError: the broker cannot be reached.
            NotImplementedError: this broker has no broadcast channels.
        """
        raise NotImplementedError(self._no_broadcast())

    def _no_broadcast(self) -> str:
        return (
            f"the {type(self).__name__} broker has no broadcast channels, so revocations and "
            "remote control do not reach its workers; use the sqlite, redis or memory broker"
        )

    # -- Celery's remote control (a mixed fleet: chard_celery_compat) ----------------
    def celery_cast(self, payload: bytes) -> None:
        """Publish ``payload`` to Celery workers' remote control (kombu's ``celery.pidbox``).

        Raises:
            BrokerConnectionError: the broker cannot be reached.
            NotImplementedError: Celery workers cannot share this kind of broker.
        """
        raise NotImplementedError(self._no_celery_control())

    def celery_casts(self, timeout: float) -> list[bytes]:
        """Return what Celery clients cast to their workers' remote control within
        ``timeout`` (listening from the first call: casts are not stored).

        Raises:
            BrokerConnectionError: the broker cannot be reached.
            NotImplementedError: Celery workers cannot share this kind of broker.
        """
        raise NotImplementedError(self._no_celery_control())

    def celery_reply(self, reply_to: Mapping[str, str], payload: bytes) -> None:
        """Send a worker's reply to a Celery call (``reply_to`` as the call carried it:
        kombu's ``{"exchange", "routing_key"}``); a client that left is not an error.

        Raises:
            BrokerConnectionError: the broker cannot be reached.
            NotImplementedError: Celery workers cannot share this kind of broker.
        """
        raise NotImplementedError(self._no_celery_control())

    def celery_reply_to(self) -> dict[str, str]:
        """Listen for replies to this process's Celery calls (from now on); return the
        ``reply_to`` a call carries so that workers answer here.

        Raises:
            BrokerConnectionError: the broker cannot be reached.
            NotImplementedError: Celery workers cannot share this kind of broker.
        """
        raise NotImplementedError(self._no_celery_control())

    def celery_replies(self, timeout: float) -> list[bytes]:
        """Return the replies (envelopes) to this process's Celery calls that came within
        ``timeout``, at once when some are there (see :meth:`celery_reply_to`).

        Raises:
            BrokerConnectionError: the broker cannot be reached.
            NotImplementedError: Celery workers cannot share this kind of broker.
        """
        raise NotImplementedError(self._no_celery_control())

    def celery_events(self, timeout: float) -> list[dict[str, Any]]:
        """Take the events Celery's workers sent (Celery's dicts) within ``timeout``, each
        taken by one caller among all chard nodes.

        Raises:
            BrokerConnectionError: the broker cannot be reached.
            NotImplementedError: this broker cannot share Celery's events out once each.
        """
        raise NotImplementedError(
            f"the {type(self).__name__} broker does not hand Celery's events to chard's tools"
        )

    def celery_restore_unacked(self, visibility_timeout: float, limit: int = 100) -> int:
        """Put back Celery deliveries left unacked longer than ``visibility_timeout``
        (kombu's ``restore_visible``: a Celery worker died holding them); return how many.

        Raises:
            BrokerConnectionError: the broker cannot be reached.
            NotImplementedError: Celery workers cannot share this kind of broker.
        """
        raise NotImplementedError(self._no_celery_control())

    def _no_celery_control(self) -> str:
        return (
            f"the {type(self).__name__} broker cannot carry Celery's remote control; a mixed "
            "Celery/chard fleet shares a redis:// or amqp:// broker"
        )

    def enlist(self, connection: Any) -> AbstractContextManager[None]:
        """Publish through ``connection``, in its transaction, while the context lasts.

        ``app.transaction(conn)`` calls this, so that a task sent inside the application's
        transaction is visible only once it commits and vanishes on rollback. Per context
        (thread or task): other threads keep publishing on the broker's own connection.

        Args:
            connection: the application's database connection (DB-API, e.g. psycopg's).

        Raises:
            ImproperlyConfigured: this broker keeps its messages elsewhere than the
                application's database (only the PostgreSQL broker can enlist).
        """
        raise ImproperlyConfigured(
            f"the {type(self).__name__} broker cannot send tasks inside your database "
            "transaction; app.transaction(conn) needs a postgresql:// broker on that database"
        )

    def close(self) -> None:  # noqa: B027 - optional hook, most brokers have something to close
        """Release connections. Unacked deliveries are left for lease expiry."""

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Publisher:
    """:meth:`Broker.publisher` of a transport that prepares nothing: :meth:`Broker.publish`."""

    __slots__ = ("_broker", "_exchange", "_priority", "_queue", "_routing_key")

    def __init__(
        self,
        broker: Broker,
        queue: str,
        priority: int,
        exchange: str | None,
        routing_key: str | None,
    ) -> None:
        self._broker = broker
        self._queue = queue
        self._priority = priority
        self._exchange = exchange
        self._routing_key = routing_key

    def __call__(self, body: bytes) -> None:
        message = OutgoingMessage(
            self._queue, body, self._priority, None, self._exchange, self._routing_key
        )
        self._broker.publish(message)


# -- policy the implementations share ----------------------------------------


def take_fairly(
    queues: Sequence[str], limit: int, turn: int, take: Callable[[str, int], list[T]]
) -> list[T]:
    """Collect up to ``limit`` items from ``queues`` without letting one starve the rest.

    The queues are rotated by ``turn`` (callers count their fetches), so none is
    always first. Each queue then gets an equal share of ``limit`` (rounded up),
    and what is left goes to the queues that had more. ``take(queue, n)``
    returns at most ``n`` items.
    """
    start = turn % len(queues)
    ordered = [*queues[start:], *queues[:start]]
    share = -(-limit // len(ordered))
    found: list[T] = []
    has_more: list[str] = []
    for queue in ordered:
        got = take(queue, min(share, limit - len(found)))
        found.extend(got)
        if len(got) == share:
            has_more.append(queue)
    for queue in has_more:
        if len(found) >= limit:
            break
        found.extend(take(queue, limit - len(found)))
    return found


def clamp_priority(priority: int) -> int:
    """Return ``priority`` forced into 0 (most urgent) .. 9, as kombu's Redis transport does.

    Clamped rather than refused: Celery code written for RabbitMQ may send up to 255.
    """
    return min(max(int(priority), 0), 9)


def parse_sequence_cursor(cursor: str) -> int:
    """Return the number in a broadcast cursor of a broker that counts its entries.

    Raises:
        ValueError: ``cursor`` is not one this broker returned.
    """
    try:
        value = int(cursor)
    except (TypeError, ValueError):
        value = -1
    if value < 0:
        raise ValueError(
            f"not a broadcast cursor of this broker: {cursor!r}; pass '0' or a cursor it returned"
        )
    return value
