"""Redis broker: kombu's queue layout, with per-consumer leases instead of a visibility timeout.

Keys (all behind the optional ``global_keyprefix``, like kombu):

* ``<queue>``, ``<queue>\\x06\\x163``, ``…\\x06\\x166``, ``…\\x06\\x169``: kombu's ready lists
  for priorities 0-2, 3-5, 6-8 and 9. Publishers ``LPUSH``, consumers pop from the right
  (FIFO), so Celery clients and workers can share the queues with chard.
* ``chard.held`` (hash tag → body) and ``chard.held.expiry`` (zset tag → lease expiry):
  messages leased to a consumer. Every lease gets a fresh tag,
  ``<consumer>.<unique>|<step><count>|<queue>``: it starts with the consumer's id (so
  take-over finds a consumer's leases) and carries the priority step, delivery count and
  queue, so a fetch, an ack or a requeue touches these two keys only. Settling a delivery
  whose lease lapsed (and was re-leased under another tag, or taken over) is a harmless
  no-op. (Leases an older chard took live in ``chard.leases``, ``chard.inflight`` and
  ``chard.inflight.meta``; heartbeats still return lapsed ones there to their queues.)
* ``chard.redeliveries`` (hash sha1(body) → deliveries so far): the delivery count of a
  message that went back to a ready list. It lives beside the body, so the envelope is
  stored byte-for-byte as published; a Celery worker popping such a message simply
  ignores it (the entry then lingers, a few bytes).
* ``chard.consumers`` (zset consumer → expiry), ``chard.landing.<consumer>`` (list) and
  ``chard.landing.src`` (hash consumer → source list): the blocking wait ``BLMOVE``\\s
  the first message into the consumer's own landing list, so a crash between the block
  and the lease cannot lose it; a lapsed or taken-over consumer's landing list goes back
  to its source.
* ``chard.delayed`` (zset member → due time, member = ``<step><queue>\\0<uuid>\\0<body>``)
  and ``chard.delayed.counts`` (hash queue → count, for :meth:`RedisBroker.queue_size`).
* ``chard.dead`` (zset id → failed_at) and ``chard.dead.<id>`` (hash): dead letters.
* ``chard.bcast.<channel>`` (stream, field ``p`` = payload): a broadcast channel's log,
  trimmed with ``XADD MAXLEN ~`` to about ``broadcast_maxlen`` entries; stream ids are
  the cursors, and readers block in ``XREAD BLOCK``.

Every state change that must be atomic runs as one Lua script on Redis time (``TIME``),
so consumers' clock skew never shortens a lease (:mod:`chard.brokers._redis_scripts`).
Scripts name their keys from the prefix argument, which is fine on a single Redis server
(kombu has the same limit: no Cluster).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from chard._redis.client import NoScriptError, RedisErrors, open_client
from chard._redis.lane import Lane, LastArgumentCommand
from chard._redis.url import parse_redis_url
from chard.brokers import _redis_scripts as scripts
from chard.brokers._kombu import (
    KombuInterop,
    priority_step,
    ready_key,
)
from chard.brokers._redis_manage import RedisManagement
from chard.brokers.base import Broker, Delivery, OutgoingMessage
from chard.exceptions import BrokerConnectionError, BrokerError

logger = logging.getLogger(__name__)

#: Longest single blocking wait: messages on lists other than the one blocked on (other
#: queues, lower priorities) are seen within this, and an idle consumer sends 2 commands
#: per wait.
DEFAULT_POLL_INTERVAL = 1.0
#: Longest time (seconds) between two fetches that also recover lapsed leases and move due
#: delayed messages, while fetches follow each other quickly: the heartbeat and an idle
#: consumer's poll do both as well, so this only spares a busy consumer the work.
SWEEP_INTERVAL = 0.1
#: How long (seconds) lists a fetch found empty count as empty for the next fetch, which
#: then blocks at once instead of looking again (:meth:`RedisBroker._just_emptied`).
JUST_EMPTIED = 0.01


class RedisDelivery(Delivery):
    """A message leased under ``tag``; settling goes through one atomic script."""

    def __init__(
        self, broker: RedisBroker, tag: str, queue: str, body: bytes, delivery_count: int
    ) -> None:
        self.tag = tag
        self.queue = queue
        self.body = body
        self.delivery_count = delivery_count
        self._broker = broker
        self._is_settled = False

    def ack(self) -> None:
        self._settle("ack")

    def reject(self, requeue: bool = False) -> None:
        self._settle("requeue" if requeue else "ack")

    def dead_letter(self, reason: str) -> None:
        self._settle("dead", reason)

    def _settle(self, mode: str, reason: str = "") -> None:
        if not self._is_settled:
            self._broker._settle(self.tag, mode, reason)
            self._is_settled = True

    def __repr__(self) -> str:
        return f"<RedisDelivery {self.tag} queue={self.queue!r} count={self.delivery_count}>"


class _ReadyPush:
    """:meth:`RedisBroker.publisher`: one body onto one ready list, a delay()'s one command."""

    __slots__ = ("_errors", "_lpush")

    def __init__(self, lpush: LastArgumentCommand, errors: RedisErrors) -> None:
        self._lpush = lpush
        self._errors = errors

    def __call__(self, body: bytes) -> None:
        try:
            self._lpush(body)
        except self._errors.caught as exc:
            raise self._errors.translate(exc) from exc


class RedisBroker(KombuInterop, RedisManagement, Broker):
    """kombu-compatible Redis queues with leases owned by this instance (one consumer).

    Options (``broker_transport_options``): ``global_keyprefix``, ``lease_timeout``, and
    ``poll_interval`` (longest single blocking wait, default 1 s). Thread-safe; fetches
    from several threads are serialised because they share one landing list.
    """

    def __init__(self, url: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(url, options)
        target = parse_redis_url(url, self.options)
        self._prefix = target.keyprefix
        self._errors = RedisErrors(
            "Redis broker",
            target.redacted,
            unreachable=BrokerConnectionError,
            failed=BrokerError,
            url_name="broker URL",
        )
        self.poll_interval = float(self.options.get("poll_interval", DEFAULT_POLL_INTERVAL))
        self._client = open_client(target)
        # Publishing is a client's hot path: one connection per thread, no pool checkout.
        self._lane = Lane(self._client)
        # Script objects re-load themselves on NOSCRIPT, e.g. after a Redis restart.
        self._fetch_script = self._client.register_script(scripts.FETCH)
        self._heartbeat_script = self._client.register_script(scripts.HEARTBEAT)
        self._settle_script = self._client.register_script(scripts.SETTLE)
        self._take_over_script = self._client.register_script(scripts.TAKE_OVER)
        self._redrive_script = self._client.register_script(scripts.REDRIVE)
        self._landing = self._key(f"chard.landing.{self.consumer_id}")
        self._fetch_lock = threading.Lock()
        self._held_lock = threading.Lock()
        self._held: set[str] = set()
        self._is_registered = False
        self._landed_spec = ""  # source of what the last blocking wait may have moved
        self._landing_src = ""  # the landing source the last fetch wrote
        self._sweep_at = 0.0  # monotonic time of the next fetch that also sweeps
        self._due_at: float | None = None  # monotonic time the next delayed message is due
        self._empty_until = 0.0  # until when the lists count as just found empty
        self._fetches = 0

    # -- publishing -----------------------------------------------------------
    def _publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """Store ``messages`` in one round-trip; all or none are stored.

        Ready messages for one list (a ``delay()``, a group of one task) are one
        ``LPUSH`` with every body, atomic by itself; anything else is one MULTI/EXEC.
        """
        first = messages[0]
        if len(messages) == 1 and first.eta is None:  # a delay(): no clock, no scan
            with self._errors():
                key = self._key(ready_key(first.queue, priority_step(first.priority)))
                self._lane.execute("LPUSH", key, first.body)
            return
        now = time.time()
        step = priority_step(first.priority)
        if all(
            m.queue == first.queue
            and (m.eta is None or m.eta <= now)
            and priority_step(m.priority) == step
            for m in messages
        ):
            with self._errors():
                key = self._key(ready_key(first.queue, step))
                self._lane.execute("LPUSH", key, *[m.body for m in messages])
            return
        with self._errors():
            pipe = self._client.pipeline(transaction=True)
            for message in messages:
                step = priority_step(message.priority)
                if message.eta is not None and message.eta > now:
                    spec = f"{step}{message.queue}".encode()
                    member = b"\0".join((spec, uuid.uuid4().hex.encode(), message.body))
                    pipe.zadd(self._key("chard.delayed"), {member: message.eta})
                    pipe.hincrby(self._key("chard.delayed.counts"), message.queue, 1)
                else:
                    pipe.lpush(self._key(ready_key(message.queue, step)), message.body)
            pipe.execute()

    def publisher(
        self,
        queue: str,
        priority: int = 0,
        exchange: str | None = None,
        routing_key: str | None = None,
    ) -> Callable[[bytes], None]:
        """An ``LPUSH`` onto ``queue``'s ready list, packed once but for the body."""
        key = self._key(ready_key(queue, priority_step(priority)))
        return _ReadyPush(LastArgumentCommand(self._lane, "LPUSH", key), self._errors)

    # -- consuming ------------------------------------------------------------
    def fetch(self, queues: Sequence[str], limit: int, timeout: float) -> list[Delivery]:
        """Lease up to ``limit`` messages, blocking up to ``timeout`` for the first.

        Each round is one script (lease what is ready; at most every :data:`SWEEP_INTERVAL`
        seconds, and whenever a delayed message falls due, it also recovers lapsed leases
        and moves due delayed messages) then, if nothing came, one ``BLMOVE`` on the
        highest-priority list of one queue (rotating), bounded by the poll interval and
        the next due time, with the script again right behind it in the same round trip
        (:meth:`_wait_and_lease`); the first script is skipped when the lists were found
        empty a moment ago (:meth:`_just_emptied`).
        """
        if limit < 1 or not queues:
            return []
        with self._fetch_lock, self._errors():
            return self._fetch(queues, limit, timeout, [])

    def ack_and_fetch(
        self, acks: Sequence[Delivery], queues: Sequence[str], limit: int, timeout: float
    ) -> list[Delivery]:
        """Carry this consumer's acks in the fetch's first script call: one round trip less.

        Other deliveries are acked one by one first. If the script never ran (it failed,
        or there was nothing to fetch), the acks are sent on their own.
        """
        acking = self._unsettled_own(acks)
        if limit < 1 or not queues or not acking:
            self._send_acks(acking)
            return self.fetch(queues, limit, timeout)
        with self._held_lock:  # as in ack_many: out of the held set first
            self._held.difference_update(d.tag for d in acking)
        try:
            with self._fetch_lock, self._errors():
                deliveries = self._fetch(queues, limit, timeout, acking)
        finally:
            if acking:  # not sent: back in the held set until they are
                with self._held_lock:
                    self._held.update(d.tag for d in acking)
        self._send_acks(acking)  # (only if the script never ran: then nothing was fetched)
        return deliveries

    def _fetch(
        self, queues: Sequence[str], limit: int, timeout: float, acking: list[RedisDelivery]
    ) -> list[Delivery]:
        """Run :meth:`fetch` with ``_fetch_lock`` held; the first script also acks ``acking``."""
        deadline = time.monotonic() + max(timeout, 0.0)
        self._fetches += 1
        start = self._fetches % len(queues)
        order = [*queues[start:], *queues[:start]]
        attempt = -1
        looked = False  # the script just ran, behind the previous round's blocking wait
        while True:
            attempt += 1
            queue = order[attempt % len(order)]
            spec = "0" + queue  # the landing list's source: step 0 of this queue
            now = time.monotonic()
            if not looked and (attempt or not self._just_emptied(spec, now)):
                deliveries = self._lease(order, limit, spec, acking)
                if deliveries:
                    return deliveries
                now = time.monotonic()
            looked = False
            remaining = deadline - now
            if remaining <= 0:
                return []
            block = min(remaining, self.poll_interval, self.lease_timeout / 2)
            if self._due_at is not None:
                block = min(block, self._due_at - now)
                if block <= 0:
                    continue  # more due messages than one script moves: go again
            after = "0" + order[(attempt + 1) % len(order)]  # the next round's source
            deliveries, looked = self._wait_and_lease(order, limit, spec, after, block, acking)
            if deliveries:
                return deliveries
            if time.monotonic() >= deadline:
                return []

    def _wait_and_lease(
        self,
        queues: Sequence[str],
        limit: int,
        spec: str,
        next_spec: str,
        block: float,
        acking: list[RedisDelivery],
    ) -> tuple[list[Delivery], bool]:
        """Block on ``spec``'s list, and lease what came in the same round trip.

        The fetch script is sent right behind the ``BLMOVE``, on the same connection, so
        Redis runs it the moment the wait ends: a message that comes to an idle consumer
        is leased one round trip sooner than by a script sent after the wait's reply.
        Acks to carry go in front of the wait (as :meth:`ack_many` sends them), so a
        consumer that just finished its work blocks again in that same round trip.
        Return the deliveries, and whether the script ran (not after a ``NOSCRIPT``).
        """
        source = self._key(ready_key(spec[1:], 0))
        self._landed_spec = spec  # (before the wait: a lost reply may have moved one)
        # 10 ms floor: a timeout of 0 would block forever.
        wait = ("BLMOVE", source, self._landing, "RIGHT", "LEFT", max(block, 0.01))
        args = self._lease_args(queues, limit, next_spec, [], behind_wait=True)
        lease = ("EVALSHA", self._fetch_script.sha, 0, *args)
        acks = self._ack_commands([d.tag for d in acking]) if acking else []
        try:
            reply = self._lane.execute_many(*acks, wait, lease)[-1]
        except NoScriptError:  # the wait ran (and the acks); the next round's script loads
            reply = None
        _mark_sent(acking)
        if reply is None:
            return [], False
        return self._leased(cast(list[Any], reply), limit, next_spec), True

    def _just_emptied(self, spec: str, now: float) -> bool:
        """Whether the last script found the lists empty a moment ago: block straight away.

        A hungry consumer's fetch that follows a short batch would only find them empty
        again. Its blocking wait still sees a new message on its own list at once; one on
        another list (another queue, a lower priority) is seen within the poll interval, as
        is any that comes while it blocks. Never when a sweep is due, acks are to be sent
        or the landing source changes.
        """
        return now < self._empty_until and spec == self._landing_src and not self._sweep_due(now)

    def _sweep_due(self, now: float) -> bool:
        return now >= self._sweep_at or (self._due_at is not None and now >= self._due_at)

    def _lease(
        self, queues: Sequence[str], limit: int, next_spec: str, acking: list[RedisDelivery]
    ) -> list[Delivery]:
        args = self._lease_args(queues, limit, next_spec, acking)
        reply = cast(list[Any], self._lane.run_script(self._fetch_script, (), args))
        _mark_sent(acking)
        return self._leased(reply, limit, next_spec)

    def _lease_args(
        self,
        queues: Sequence[str],
        limit: int,
        next_spec: str,
        acking: list[RedisDelivery],
        behind_wait: bool = False,
    ) -> list[Any]:
        """Return the fetch script's arguments.

        It sweeps when a sweep is due; ``behind_wait`` (it runs when a blocking wait
        ends), also when that wait ends without a message: an idle consumer sweeps once
        per wait, in the script that follows it, not in one more call before the next.
        """
        sweep = self._sweep_due(time.monotonic())
        # The landing source is written when it changes, and with every sweep (a consumer
        # whose registration lapsed was forgotten, source and all).
        spec = next_spec if sweep or next_spec != self._landing_src else ""
        mode = "1" if sweep else "w" if behind_wait else ""
        tag_base = self._tag_base(str(self._fetches))
        args: list[Any] = [self._prefix, self.consumer_id, self.lease_timeout, limit, tag_base]
        args += [self._landed_spec, spec, mode, len(acking)]
        args += [*(d.tag for d in acking), *queues]
        return args

    def _leased(self, reply: list[Any], limit: int, next_spec: str) -> list[Delivery]:
        """Take in the fetch script's reply: the leases it took, and what it swept."""
        now = time.monotonic()
        self._landed_spec, self._landing_src = "", next_spec
        self._is_registered = True
        if reply[1] != b"-":  # it swept
            self._sweep_at = now + min(SWEEP_INTERVAL, self.poll_interval)
            due = float(reply[1]) - float(reply[0]) if reply[1] else None
            self._due_at = None if due is None else now + due
        deliveries = self._hold(reply[2:])
        self._empty_until = now + JUST_EMPTIED if len(deliveries) < limit else 0.0
        if deliveries:
            logger.debug("Leased %d message(s)", len(deliveries))
        return deliveries

    def _take_over(self, consumer_id: str) -> list[Delivery]:
        """Re-lease ``consumer_id``'s leases under new tags in one script.

        The script also returns what that consumer's blocking wait had moved into its
        landing list, not yet leased, to the queue it came from, uncounted (as recovery
        does for a consumer whose registration lapsed). The registration itself is left
        to lapse, so that anything a blocking wait of the dead process still moves (Redis
        may serve it before noticing the closed connection) is recovered then.
        """
        args: list[Any] = [self._prefix, consumer_id, self.consumer_id, self.lease_timeout]
        with self._errors():
            raw = self._take_over_script(args=[*args, self._tag_base("takeover")])
        return self._hold(cast(list[Any], raw))

    def _tag_base(self, kind: str) -> str:
        """Start tags with the consumer id: take-over finds a consumer's leases by it."""
        return f"{self.consumer_id}.{kind}.{time.monotonic_ns()}"

    def _hold(self, reply: Sequence[Any]) -> list[Delivery]:
        """Turn a script's ``tag, body, ...`` into deliveries heartbeats extend.

        The tag says the rest: ``<lease id>|<step><count>|<queue>``.
        """
        deliveries: list[Delivery] = []
        for i in range(0, len(reply), 2):
            tag = reply[i].decode()
            _, meta, queue = tag.split("|", 2)
            deliveries.append(RedisDelivery(self, tag, queue, reply[i + 1], int(meta[1:])))
        if deliveries:
            with self._held_lock:
                self._held.update(cast(RedisDelivery, d).tag for d in deliveries)
        return deliveries

    def heartbeat(self) -> None:
        """Extend this consumer's leases, recover lapsed ones, and move due delayed messages."""
        with self._held_lock:
            tags = list(self._held)
        consumer = self.consumer_id if self._is_registered else ""
        with self._errors():
            raw = self._heartbeat_script(args=[self._prefix, consumer, self.lease_timeout, *tags])
        lost = {tag.decode() for tag in cast(list[bytes], raw)}
        if lost:
            with self._held_lock:
                lost &= self._held  # not those settled while the script ran
                self._held.difference_update(lost)
        if lost:
            logger.warning(
                "Lost the lease of %d message(s) (held past lease_timeout=%ss without a "
                "heartbeat); they were delivered again",
                len(lost),
                self.lease_timeout,
            )

    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Ack this consumer's deliveries in one round trip (other deliveries one by one).

        An ack only drops the lease's records (tags are unique per lease), so unlike
        requeue and dead-letter it needs no script: dropping a lapsed tag is a no-op. Nor
        a transaction: the body goes first, and a lease whose body is gone is only dropped
        when it lapses or is taken over, so an ack cut short anywhere loses nothing and
        runs nothing twice.
        """
        self._send_acks(self._unsettled_own(deliveries))

    def _unsettled_own(self, deliveries: Sequence[Delivery]) -> list[RedisDelivery]:
        """Return this consumer's unsettled deliveries; ack the others one by one."""
        mine: list[RedisDelivery] = []
        for delivery in deliveries:
            if isinstance(delivery, RedisDelivery) and delivery._broker is self:
                if not delivery._is_settled:
                    mine.append(delivery)
            else:
                delivery.ack()
        return mine

    def _send_acks(self, mine: Sequence[RedisDelivery]) -> None:
        if not mine:
            return
        tags = [d.tag for d in mine]
        with self._held_lock:  # as in _settle: out of the held set first, back in on failure
            self._held.difference_update(tags)
        try:
            with self._errors():
                self._lane.execute_many(*self._ack_commands(tags))
        except BrokerError:
            with self._held_lock:
                self._held.update(tags)
            raise
        for delivery in mine:
            delivery._is_settled = True

    def _ack_commands(self, tags: Sequence[str]) -> list[tuple[str, ...]]:
        """The commands that ack leases: drop their records (see :meth:`ack_many`)."""
        return [
            ("HDEL", self._key("chard.held"), *tags),
            ("ZREM", self._key("chard.held.expiry"), *tags),
        ]

    def _settle(self, tag: str, mode: str, reason: str) -> None:
        # Out of the held set first: a heartbeat racing this settle (or a retry of one
        # whose reply was lost) must not report the lease as lost.
        with self._held_lock:
            self._held.discard(tag)
        with self._errors():
            is_ours = self._settle_script(args=[self._prefix, tag, mode, reason])
        if not is_ours:
            logger.debug("Settling %s (%s) was a no-op: its lease had lapsed", tag, mode)

    def close(self) -> None:
        """Close connections; held leases lapse and are redelivered after ``lease_timeout``."""
        self._close_pidbox()
        self._lane.close()
        self._client.close()


def _mark_sent(acking: list[RedisDelivery]) -> None:
    """Mark the acks a fetch carried as sent, and empty the list (none is to be sent again)."""
    for delivery in acking:
        delivery._is_settled = True
    acking.clear()
