"""RabbitMQ (AMQP 0-9-1) broker: Celery's layout on the wire, chard's leases on top of acks.

Layout. Queue ``q`` is a durable queue bound to a durable direct exchange ``q`` with
routing key ``q``, as kombu declares Celery's ``celery`` queue; messages are AMQP frames
with protocol-v2 headers and properties (:mod:`chard._amqp.frames`), published
persistent with publisher confirms: :meth:`publish` returns when RabbitMQ has them.
With ``queue_max_priority`` (``task_queue_max_priority``) queues get ``x-max-priority``
and, as on RabbitMQ under Celery, a *higher* number is more urgent.

Leases on acks. A fetched message is an unacked delivery of this instance's channel
(pushed to its consumer, QoS twice the worker's window; a ``basic.get`` when that window
is full), so RabbitMQ hands it to nobody else, and gives it back at once
(``redelivered``) when the holder's connection dies: that is a lapsed lease without the
wait. Pushed messages not handed out yet count in :meth:`queue_size` and go with
:meth:`purge`; if nobody fetches for a lease, they go back to the queue and the
consumer is cancelled (:mod:`._amqp_consume`), so none hide behind a busy holder.
A holder that lives but stops heartbeating (a wedged worker) is caught by a
watchdog thread: once a lease is ``lease_timeout`` old without :meth:`heartbeat`, the
message is re-published counted and the stale delivery acked, exactly a lapse.

Counting. RabbitMQ only says *whether* a message was delivered before, so chard keeps
the count in header ``x-chard-deliveries`` (deliveries lost before this copy). A
message that comes back ``redelivered`` is not handed out: it is re-published and the
original acked, with the count raised if a supervisor recorded that its child died running
it (:meth:`note_lost`, on the broadcast channel ``chard.lost``); the messages a dead child
had fetched ahead come back uncounted. So a message that kills child after child reaches
``task_max_deliveries`` and is dead-lettered, as on Redis, and its neighbours do not.
``reject(requeue=True)`` re-publishes with the count unchanged (a ``basic.nack`` would set
``redelivered``).

Take-over. Unacked messages belong to a channel, and another process cannot settle
them; when a worker child dies its connection closes and RabbitMQ redelivers its
messages at once, counted as above. :meth:`take_over` therefore raises
``NotImplementedError``, which the supervisor handles.

countdown/eta: TTL queues per bit of the delay (:mod:`chard._amqp.delay`). Dead letters:
the queue ``chard.dead-letters``, browsed by get-and-requeue.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, ClassVar

from chard._amqp import delay as chain
from chard._amqp.client import AmqpClient, Got, MissingQueue, UnroutableMessage
from chard._amqp.frames import (
    COUNT_HEADER,
    ETA_HEADER,
    ORIGIN_HEADER,
    PARK_HEADER,
    Frame,
    lost_deliveries,
    to_envelope,
    to_frame,
)
from chard._amqp.url import parse_amqp_url
from chard.brokers import _amqp_dead as dead
from chard.brokers import _amqp_topology as topology
from chard.brokers._amqp_celeryev import CeleryEvents
from chard.brokers._amqp_consume import Subscriptions
from chard.brokers._amqp_log import StreamLog
from chard.brokers._amqp_park import Parking
from chard.brokers._amqp_pidbox import Pidbox
from chard.brokers._amqp_publishers import Publishers
from chard.brokers.base import (
    BROADCAST_START,
    Broker,
    DeadLetter,
    DelayedMessage,
    Delivery,
    OutgoingMessage,
    take_fairly,
)
from chard.exceptions import BrokerError, ImproperlyConfigured
from chard.protocol.events import EVENTS_CHANNEL
from chard.protocol.topology import Topology

logger = logging.getLogger(__name__)

#: chard's bookkeeping headers, dropped when a message is re-published elsewhere.
_OWN_HEADERS = frozenset({COUNT_HEADER, ETA_HEADER, ORIGIN_HEADER, PARK_HEADER})
#: Broadcast channel of the task ids a supervisor saw a child die running (note_lost).
LOST_CHANNEL = "chard.lost"
#: How long a redelivered message waits for its death record before it counts as innocent.
_LOST_GRACE = 0.05
#: RabbitMQ's default consumer_timeout (seconds); the ``consumer_timeout`` option overrides it.
DEFAULT_CONSUMER_TIMEOUT = 1800.0


class AmqpDelivery(Delivery):
    """An unacked delivery (pushed or ``basic.get``) of one broker instance."""

    def __init__(self, broker: AmqpBroker, got: Got, queue: str, lost: int) -> None:
        self._broker = broker
        self.got = got
        self.queue = queue
        self.body = to_envelope(got.frame, queue, got.exchange)
        self.delivery_count = lost + 1
        self.delivery_limit = broker.delivery_limits.get(queue)
        self.priority = got.frame.priority
        self.fetched_at = time.monotonic()
        self.expires = self.fetched_at + broker.lease_timeout
        self.settled = False
        #: Park id while the message waits in this instance's parking queue (see _amqp_park).
        self.parked: str | None = None
        self.parked_at = 0.0

    def __repr__(self) -> str:
        return f"<AmqpDelivery tag={self.got.tag} queue={self.queue!r} n={self.delivery_count}>"

    def ack(self) -> None:
        self._broker._settle(self, self._broker.client.settle)

    def reject(self, requeue: bool = False) -> None:
        if not requeue:
            self.ack()
            return
        lost = self.delivery_count - 1
        self._broker._settle(self, lambda got: self._broker._move(got, self.queue, lost))

    def dead_letter(self, reason: str) -> None:
        def move(got: Got) -> None:
            headers = {k: v for k, v in got.frame.headers.items() if k not in _OWN_HEADERS}
            frame = replace(got.frame, headers=headers)
            letter = dead.letter_frame(frame, self.queue, reason, self.delivery_count)
            broker = self._broker
            broker._ensure_queue(dead.DEAD_LETTER_QUEUE)
            broker.client.publish("", dead.DEAD_LETTER_QUEUE, letter)
            broker.client.settle(got)

        self._broker._settle(self, move)


class AmqpBroker(Broker):
    """Queues on RabbitMQ; see the module docstring for how leases map onto acks."""

    #: A larger priority number is served first (RabbitMQ's and Celery's convention there).
    higher_priority_first: ClassVar[bool] = True

    def __init__(self, url: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(url, options)
        self.target = parse_amqp_url(url, self.options)
        self.client = AmqpClient(self.target)
        #: Confirmed publishes go out here: on a spare connection while ``client`` is busy.
        self._publishers = Publishers(self.client)
        max_priority = self.options.get("queue_max_priority")
        if max_priority is not None and not 1 <= int(max_priority) <= 255:
            raise ImproperlyConfigured(
                f"task_queue_max_priority must be 1..255 on RabbitMQ, got {max_priority!r}"
            )
        self.max_priority = None if max_priority is None else int(max_priority)
        self.queue_type = str(self.options.get("queue_type") or "classic")
        if self.queue_type not in ("classic", "quorum"):
            raise ImproperlyConfigured(
                f"task_default_queue_type must be 'classic' or 'quorum', got {self.queue_type!r}"
            )
        if self.queue_type == "quorum" and self.max_priority is not None:
            raise ImproperlyConfigured(
                "RabbitMQ quorum queues have no priorities (x-max-priority): unset "
                "task_queue_max_priority or use task_default_queue_type='classic'"
            )
        #: Every queue's declaration (``task_queues``); without an app's, every queue
        #: gets this broker's queue type and priority, on its own direct exchange.
        self.topology: Topology = self.options.get("topology") or Topology.from_settings(
            default_queue_type=self.queue_type,
            missing_queue_type=self.queue_type,
            max_priority=self.max_priority,
        )
        self._destinations: dict[tuple[str, str | None, str | None], tuple[str, str]] = {}
        #: The ``x-delivery-limit`` of each declared queue that has one (quorum queues).
        self.delivery_limits: dict[str, int | None] = {}
        #: Queues (and delay chains) this instance declared: declared once per process.
        self.declared: set[str] = set()
        self._held: dict[int, AmqpDelivery] = {}
        self._subscriptions = Subscriptions(self.client, self._redeclare, self._put_back)
        #: When fetch last ran: consumers idle for a lease are cancelled (unsubscribe).
        self._fetched_at = 0.0
        self._turn = 0
        self._closed = threading.Event()
        self._watchdog: threading.Thread | None = None
        self._stream_log: StreamLog | None = None
        #: Task ids a supervisor saw a process die running (read from LOST_CHANNEL).
        self._lost: dict[str, None] = {}
        self._lost_cursor = BROADCAST_START
        timeout = self.options.get("consumer_timeout", DEFAULT_CONSUMER_TIMEOUT)
        #: Seconds RabbitMQ lets a channel hold a delivery (0: no parking).
        self.consumer_timeout = float(timeout or 0)
        self._parking = Parking(self.client, self.consumer_id, max(3 * self.lease_timeout, 3.0))
        self._pidbox = Pidbox(self.client, self.consumer_id)
        is_mirrored = bool(self.options.get("celery_events"))
        self._celery_events = CeleryEvents(self.client) if is_mirrored else None
        self._celery_heard: CeleryEvents | None = None

    # -- declarations ------------------------------------------------------------
    def _ensure_queue(self, queue: str) -> None:
        if queue in self.declared:
            return
        if queue == dead.DEAD_LETTER_QUEUE:
            self.client.declare_queue(queue)
        else:
            self.delivery_limits[queue] = topology.declare(self.client, self.topology.queue(queue))
        self.declared.add(queue)

    def _destination(self, m: OutgoingMessage) -> tuple[str, str]:
        """The exchange and routing key of ``m`` (Celery's rule, see :mod:`topology`)."""
        if m.exchange == "":
            return "", m.queue
        key = (m.queue, m.exchange, m.routing_key)
        found = self._destinations.get(key)
        if found is None:
            found = self._destinations[key] = topology.destination(self.topology, *key)
        return found

    def _ensure_delay_chain(self, queue: str) -> None:
        """Declare the delay exchanges once, and every level's TTL queue for ``queue``."""
        key = f"\0delay:{queue}"
        if key in self.declared:
            return
        if "\0delay" not in self.declared:
            self.client.declare_exchange(chain.DELIVER_EXCHANGE, "topic")
            for level in range(chain.LEVELS):
                self.client.declare_exchange(chain.level_exchange(level), "topic")
            for level in range(chain.LEVELS):
                self.client.bind_exchange(
                    chain.level_exchange(level - 1), chain.level_exchange(level),
                    chain.skip_pattern(level),
                )  # fmt: skip
            self.declared.add("\0delay")
        self._ensure_queue(queue)
        for level in range(chain.LEVELS):
            name = chain.level_queue(level, queue)
            self.client.declare_queue(name, chain.level_arguments(level))
            self.client.bind_queue(
                name, chain.level_exchange(level), chain.wait_pattern(level, queue)
            )
        self.client.bind_queue(queue, chain.DELIVER_EXCHANGE, chain.deliver_pattern(queue))
        self.declared.add(key)

    def _has_delay_chain(self, queue: str) -> bool:
        return self.client.queue_size(chain.level_queue(0, queue)) is not None

    # -- publishing ----------------------------------------------------------------
    def _publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """Publish one message with a confirm, or several in one transaction (all or none)."""
        now = time.time()
        items = [self._route(m, now) for m in messages]
        if len(items) == 1:
            exchange, key, frame = items[0]
            self._send(exchange, key, frame, messages[0].queue)
            return
        with self._publishers.lease() as client:
            try:
                client.publish_batch(items)
            except MissingQueue:  # deleted behind our back: declare everything again, once
                self.declared.clear()
                client.publish_batch([self._route(m, now) for m in messages])

    def _route(self, m: OutgoingMessage, now: float) -> tuple[str, str, Frame]:
        """Declare what ``m`` needs; return the exchange, routing key and frame it goes with."""
        frame = to_frame(m.body, min(max(int(m.priority), 0), 255))
        wait = chain.delay_seconds(m.eta, now) if m.eta is not None else 0
        if wait > chain.MAX_DELAY:
            raise ValueError(f"eta is {wait} s away; RabbitMQ delays reach {chain.MAX_DELAY} s")
        if wait:
            self._ensure_delay_chain(m.queue)
            frame.headers[ETA_HEADER] = int((m.eta or now) * 1000)  # for delayed() (ms)
            return chain.ENTRY_EXCHANGE, chain.routing_key(wait, m.queue), frame
        self._ensure_queue(m.queue)
        return (*self._destination(m), frame)

    def _send(self, exchange: str, key: str, frame: Frame, queue: str) -> None:
        with self._publishers.lease() as client:
            try:
                client.publish(exchange, key, frame)
            except UnroutableMessage:
                # Deleted behind our back (or a purge of the vhost): declare again, once.
                self.declared.discard(queue)
                self.declared.discard(f"\0delay:{queue}")
                if exchange == chain.ENTRY_EXCHANGE:
                    self._ensure_delay_chain(queue)
                else:
                    self._ensure_queue(queue)
                client.publish(exchange, key, frame)

    def _move(self, got: Got, queue: str, lost: int) -> None:
        """Put ``got`` back at the tail of ``queue`` with ``lost`` in its count, then ack it."""
        headers = {k: v for k, v in got.frame.headers.items() if k not in _OWN_HEADERS}
        frame = replace(got.frame, headers={**headers, COUNT_HEADER: lost})
        self._ensure_queue(queue)
        self._send("", queue, frame, queue)
        self.client.settle(got)

    # -- consuming ------------------------------------------------------------------
    def fetch(self, queues: Sequence[str], limit: int, timeout: float) -> list[Delivery]:
        if limit < 1 or not queues:
            return []
        deadline = time.monotonic() + timeout
        for queue in queues:
            self._ensure_queue(queue)
        while not self._closed.is_set():
            with self.client.lock:
                self._fetched_at = time.monotonic()
                self._subscriptions.subscribe(queues, limit)
                # What was pushed already (or a basic.get, if the QoS window is full).
                found = take_fairly(queues, limit, self._turn, self._take)
                remaining = deadline - time.monotonic()
                if not found:
                    # Read the socket, waiting while it is quiet: a push ends the wait at
                    # once, and so does another thread asking for the lock (an ack that
                    # opens the QoS window). What came is handed out under the same lock.
                    self.client.pump(max(remaining, 0))
                    found = take_fairly(queues, limit, self._turn, self._take)
            if found:
                self._turn += 1
                self._start_watchdog()
                return list(found)
            if remaining <= 0:
                break
            time.sleep(0)  # let a thread that woke the wait take the lock
        return []

    def _take(self, queue: str, n: int) -> list[AmqpDelivery]:
        """Hand out up to ``n`` messages RabbitMQ pushed from ``queue`` (``client.lock`` held)."""
        found: list[AmqpDelivery] = []
        buffer = self._subscriptions.buffers.get(queue)
        while len(found) < n:
            if buffer:
                got: Got | None = buffer.popleft()
            elif len(self._held) >= self._subscriptions.window:  # QoS full of unsettled ones: ask
                got = self._get(queue)
            else:
                break
            if got is None:
                break
            if got.generation != self.client.generation:
                continue  # its connection is gone, and RabbitMQ has requeued it
            if got.redelivered:  # its holder died: count that if it was running, requeue
                self._put_back(got, queue)
                continue
            delivery = AmqpDelivery(self, got, queue, lost_deliveries(got.frame))
            self._held[id(delivery)] = delivery
            found.append(delivery)
        return found

    def _put_back(self, got: Got, queue: str) -> None:
        """Return a message not handed out to the tail of ``queue``, counted if it ran."""
        died = got.redelivered and self._died_running(got.frame.headers.get("id"))
        self._move(got, queue, lost_deliveries(got.frame) + died)

    def _get(self, queue: str) -> Got | None:
        """One ``basic.get``: RabbitMQ pushes nothing while the QoS window is held."""
        try:
            return self.client.get(queue)
        except MissingQueue:  # deleted behind our back: it is declared again, empty
            self._redeclare(queue)
            return None

    def _redeclare(self, queue: str) -> None:
        self.declared.discard(queue)
        self._ensure_queue(queue)

    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        with self.client.acks_together():  # one lock round and one write for the lot
            for delivery in deliveries:
                delivery.ack()

    def note_lost(self, task_id: str) -> None:
        self._log.append(LOST_CHANNEL, task_id.encode())

    def _died_running(self, task_id: object) -> bool:
        """Whether a supervisor recorded a process death while ``task_id`` ran (note_lost).

        A record may trail the redelivery by a few milliseconds (the supervisor learns of
        the death after RabbitMQ does), so a miss is read again once after a short pause.
        """
        if not isinstance(task_id, str) or not task_id:
            return False
        for attempt in range(2):
            entries = self._log.read(LOST_CHANNEL, self._lost_cursor, 0)
            if entries:
                self._lost_cursor = entries[-1][0]
                self._lost.update(dict.fromkeys(p.decode(errors="replace") for _, p in entries))
                while len(self._lost) > 10_000:  # the oldest records matter least
                    self._lost.pop(next(iter(self._lost)))
            if task_id in self._lost:
                return True
            if attempt == 0:
                time.sleep(_LOST_GRACE)
        return False

    def _settle(self, delivery: AmqpDelivery, action: Callable[[Got], object]) -> None:
        """Settle ``delivery`` once, through its parked copy if it was parked."""
        with self.client.lock:
            if delivery.settled:
                return
            delivery.settled = True
            self._held.pop(id(delivery), None)
            got: Got | None = delivery.got
            if delivery.parked is not None:
                got = self._parking.take(delivery.parked)
            if got is not None:  # None: the parked copy went home (a lapse): not ours now
                action(got)

    def heartbeat(self) -> None:
        """Extend every lease this instance holds, and keep the AMQP connection alive."""
        with self.client.lock:
            expires = time.monotonic() + self.lease_timeout
            for delivery in self._held.values():
                delivery.expires = expires
            self.client.pump()

    def _start_watchdog(self) -> None:
        if self._watchdog is None:
            self._watchdog = threading.Thread(
                target=self._watch, name="chard-amqp-leases", daemon=True
            )
            self._watchdog.start()

    def _watch(self) -> None:
        """Lapse leases not extended in time; park and renew what is held for long."""
        interval = min(self.lease_timeout / 4, 1.0)
        while not self._closed.wait(interval):
            try:
                with self.client.lock:
                    now = time.monotonic()
                    idle = min(self.lease_timeout, self.consumer_timeout / 2 or math.inf)
                    if self._subscriptions and now - self._fetched_at >= idle:
                        self._subscriptions.unsubscribe()
                    for delivery in [d for d in self._held.values() if d.expires <= now]:
                        self._lapse(delivery)
                    self._park_the_old(now)
                    self.client.pump()
            except Exception:  # the thread must outlive any one failure; the next round retries
                logger.exception("RabbitMQ lease watchdog failed; retrying")

    def _park_the_old(self, now: float) -> None:
        """Park deliveries held for half of consumer_timeout; renew parked ones in time.

        (Pushed messages not handed out never wait that long: see :mod:`._amqp_consume`.)
        """
        if not self.consumer_timeout:
            return
        parked = [d for d in self._held.values() if d.parked is not None]
        for delivery in self._held.values():
            if delivery.parked is None and now - delivery.fetched_at >= self.consumer_timeout / 2:
                delivery.parked = self._parking.park(
                    delivery.got, delivery.queue, delivery.delivery_count
                )
                delivery.parked_at = now
                logger.info("Parked %r, held past half of consumer_timeout", delivery)
        if parked and now - min(d.parked_at for d in parked) >= self._parking.ttl / 3:
            self._parking.renew({d.parked for d in parked if d.parked is not None})
            for delivery in parked:
                delivery.parked_at = now

    def _lapse(self, delivery: AmqpDelivery) -> None:
        logger.warning("Lease of %r lapsed without a heartbeat: redelivering it", delivery)
        lost = delivery.delivery_count
        # If the connection is gone, RabbitMQ has requeued it already: nothing to do.
        with contextlib.suppress(BrokerError):
            self._settle(delivery, lambda got: self._move(got, delivery.queue, lost))

    def _take_over(self, consumer_id: str) -> list[Delivery]:
        raise NotImplementedError(
            f"the RabbitMQ broker cannot take over consumer {consumer_id!r}'s messages: "
            "unacked AMQP deliveries belong to their channel; RabbitMQ redelivers them at "
            "once (counted) when the dead process's connection closes"
        )

    # -- queues and dead letters ---------------------------------------------------
    def _pushed(self, queue: str, *, take: bool) -> list[Got]:
        """The messages of ``queue`` RabbitMQ pushed here that fetch has not handed out.

        They wait as much as the queue's ready ones (queue_size counts them, purge takes
        and drops them); other instances' are theirs, as in Celery.
        """
        with self.client.lock:
            self.client.pump()
            return self._subscriptions.pushed(queue, take=take)

    def purge(self, queue: str) -> int:
        pushed = self._pushed(queue, take=True)
        for got in pushed:
            self.client.settle(got)
        purged = len(pushed) + self.client.purge(queue)
        if self._has_delay_chain(queue):
            purged += sum(
                self.client.purge(chain.level_queue(lv, queue)) for lv in range(chain.LEVELS)
            )
        return purged

    def queue_size(self, queue: str) -> int:
        with self.client.lock:
            size = len(self._pushed(queue, take=False)) + (self.client.queue_size(queue) or 0)
        if self._has_delay_chain(queue):
            size += sum(
                self.client.queue_size(chain.level_queue(lv, queue)) or 0
                for lv in range(chain.LEVELS)
            )
        return size

    def delayed(self, queues: Sequence[str], limit: int = 100) -> list[DelayedMessage]:
        """What waits in the delay chains of ``queues`` (browsed, given back untouched)."""
        return topology.browse_delayed(self.client, queues, limit)

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        taken, _ = dead.browse(self.client, max(limit, 0))
        return [dead.to_dead_letter(got) for got in taken]

    def redrive(self, dead_letter_id: str, body: bytes | None = None) -> bool:
        with self.client.lock:
            _, found = dead.browse(self.client, 2**31, wanted=dead_letter_id)
            if found is None:
                return False
            letter = dead.to_dead_letter(found)
            frame = dead.original_frame(found.frame)
            if body is not None:
                frame = to_frame(body, found.frame.priority)
            self._ensure_queue(letter.queue)
            self._send("", letter.queue, frame, letter.queue)
            self.client.settle(found)
            return True

    # -- broadcast channels: streams (see _amqp_log) -------------------------------------
    @property
    def _log(self) -> StreamLog:
        """The broadcast log, with a connection of its own for blocked reads."""
        with self.client.lock:
            if self._stream_log is None:
                reader = AmqpClient(self.target)
                self._stream_log = StreamLog(
                    self.client, reader, self.broadcast_maxlen, self.declared
                )
            return self._stream_log

    def broadcast(self, channel: str, payload: bytes, *, maxlen: int | None = None) -> str:
        cursor = self._log.append(channel, payload, maxlen)
        if self._celery_events is not None and channel == EVENTS_CHANNEL:
            self._celery_events.publish(payload)  # for Celery's tools too (see _amqp_celeryev)
        return cursor

    def broadcast_read(self, channel: str, after: str, timeout: float) -> list[tuple[str, bytes]]:
        return self._log.read(channel, after, timeout)

    def broadcast_tail(self, channel: str) -> str:
        return self._log.tail(channel)

    # -- Celery's remote control (a mixed fleet): the celery.pidbox fanout (see _amqp_pidbox) --
    def celery_cast(self, payload: bytes) -> None:
        self._pidbox.cast(payload)

    def celery_casts(self, timeout: float) -> list[bytes]:
        return self._pidbox.casts(timeout)

    def celery_reply(self, reply_to: Mapping[str, str], payload: bytes) -> None:
        self._pidbox.reply(reply_to, payload)

    def celery_reply_to(self) -> dict[str, str]:
        return self._pidbox.await_replies()

    def celery_replies(self, timeout: float) -> list[bytes]:
        return self._pidbox.replies(timeout)

    def celery_events(self, timeout: float) -> list[dict[str, Any]]:
        if self._celery_heard is None:  # see _amqp_celeryev: one queue for every chard node
            self._celery_heard = CeleryEvents(self.client)
        return self._celery_heard.heard(timeout)

    def celery_restore_unacked(self, visibility_timeout: float, limit: int = 100) -> int:
        return 0  # RabbitMQ gives a dead Celery worker's deliveries back itself, at once

    def close(self) -> None:
        self._closed.set()
        with self.client.lock:
            if self._subscriptions:
                self._subscriptions.unsubscribe()
        self.client.close()
        self._publishers.close()
        if self._stream_log is not None:
            self._stream_log.reader.close()
