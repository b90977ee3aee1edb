"""In-process broker: the whole contract in memory, for tests and eager mode.

It keeps the same guarantees as the durable brokers (leases, lapse and
redelivery, counted deliveries, priorities, ETAs, dead letters), so tests that
pass here mean the same thing on SQLite or Redis.

``memory://`` gives each instance a private store. ``memory://<name>`` shares
one store among the instances opened with that name in this process (like
SQLite's named in-memory databases), so a test can run a client and two
consumers against one queue; the store lives as long as an instance uses it.

Everything is guarded by one :class:`threading.Condition`: publishers notify
it, and a blocked :meth:`MemoryBroker.fetch` sleeps on it until the next ETA or
lease expiry at the latest, so waiting costs no CPU. Broadcast channels are
deques of ``(sequence, payload)`` in the same store; a blocked
:meth:`MemoryBroker.broadcast_read` sleeps on the same condition.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from chard._utils.clock import Clock, SystemClock
from chard.brokers.base import (
    Broker,
    DeadLetter,
    Delivery,
    OutgoingMessage,
    clamp_priority,
    parse_sequence_cursor,
    take_fairly,
)


@dataclass(eq=False)
class _Message:
    id: int
    queue: str
    body: bytes
    priority: int
    due_at: float
    delivery_count: int = 0
    owner: str | None = None
    #: Identifies the current lease; 0 when none. Settling needs the matching token.
    token: int = 0
    lease_expires: float | None = None


class _Store:
    """State shared by every :class:`MemoryBroker` opened on one name."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.messages: dict[int, _Message] = {}
        #: The messages under a lease, so lapses are found without a full scan.
        self.leased: dict[int, _Message] = {}
        self.dead: dict[str, tuple[_Message, DeadLetter]] = {}
        self.ids = itertools.count(1)
        # Per queue, a heap of (priority, id) of messages that may be due; entries
        # of messages since leased or deleted are skipped when popped.
        self.heaps: dict[str, list[tuple[int, int]]] = {}
        #: Per broadcast channel, its kept entries as (sequence, payload), oldest first.
        self.channels: dict[str, deque[tuple[int, bytes]]] = {}

    def push(self, message: _Message) -> None:
        heapq.heappush(self.heaps.setdefault(message.queue, []), (message.priority, message.id))


_stores: weakref.WeakValueDictionary[str, _Store] = weakref.WeakValueDictionary()
_stores_lock = threading.Lock()


def _open_store(url: str) -> _Store:
    name = url.partition("://")[2].strip("/")
    if not name:
        return _Store()
    with _stores_lock:
        store = _stores.get(name)
        if store is None:
            store = _stores[name] = _Store()
        return store


class MemoryDelivery(Delivery):
    """A leased message; settles only while its lease token is still current."""

    def __init__(self, broker: MemoryBroker, message: _Message) -> None:
        self._broker = broker
        self._id = message.id
        self._token = message.token
        self.body = message.body
        self.queue = message.queue
        self.delivery_count = message.delivery_count
        self.priority = message.priority

    def __repr__(self) -> str:
        return f"<MemoryDelivery id={self._id} queue={self.queue!r} n={self.delivery_count}>"

    def ack(self) -> None:
        self._settle(_delete)

    def reject(self, requeue: bool = False) -> None:
        if requeue:
            self._settle(self._requeue)
        else:
            self.ack()

    def dead_letter(self, reason: str) -> None:
        def move(store: _Store, m: _Message) -> None:
            _delete(store, m)
            key = str(next(store.ids))
            now = self._broker.clock.time()
            store.dead[key] = (m, DeadLetter(key, m.queue, m.body, reason, now, m.delivery_count))

        self._settle(move)

    @staticmethod
    def _requeue(store: _Store, m: _Message) -> None:
        m.delivery_count -= 1  # a requeue does not count as a delivery
        m.owner, m.token, m.lease_expires = None, 0, None
        store.leased.pop(m.id, None)
        store.push(m)
        store.cond.notify_all()

    def _settle(self, action: Callable[[_Store, _Message], object]) -> None:
        store = self._broker._store
        with store.cond:
            message = store.messages.get(self._id)
            # Gone, or leased again by someone else (ours lapsed): not ours to touch.
            if message is not None and message.token == self._token:
                action(store, message)


class MemoryBroker(Broker):
    """A thread-safe broker inside one process; see the module docstring for sharing."""

    def __init__(
        self,
        url: str = "memory://",
        options: Mapping[str, Any] | None = None,
        *,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(url, options)
        self.clock: Clock = clock or SystemClock()
        self._store = _open_store(url)
        self._turn = 0

    def _publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """Store ``messages`` at once: consumers see all of them or none."""
        store, now = self._store, self.clock.time()
        with store.cond:
            for m in messages:
                message = _Message(
                    next(store.ids), m.queue, m.body, clamp_priority(m.priority), m.eta or now
                )
                store.messages[message.id] = message
                store.push(message)
            store.cond.notify_all()

    def fetch(self, queues: Sequence[str], limit: int, timeout: float) -> list[Delivery]:
        if limit < 1 or not queues:
            return []
        deadline = time.monotonic() + timeout
        store = self._store
        with store.cond:
            while True:
                self._reclaim_lapsed()
                found = take_fairly(queues, limit, self._turn, self._take)
                if found:
                    self._turn += 1
                    return list(found)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                store.cond.wait(min(remaining, self._until_next_change(queues)))

    def _take(self, queue: str, n: int) -> list[MemoryDelivery]:
        """Lease up to ``n`` due messages of ``queue``; the caller holds the lock."""
        store, now = self._store, self.clock.time()
        heap = store.heaps.get(queue, [])
        found: list[MemoryDelivery] = []
        not_due: list[tuple[int, int]] = []
        while heap and len(found) < n:
            entry = heapq.heappop(heap)
            message = store.messages.get(entry[1])
            if message is None or message.lease_expires is not None:
                continue  # deleted or leased since it was pushed
            if message.due_at > now:
                not_due.append(entry)
                continue
            message.owner, message.token = self.consumer_id, next(store.ids)
            message.lease_expires = now + self.lease_timeout
            message.delivery_count += 1
            store.leased[message.id] = message
            found.append(MemoryDelivery(self, message))
        for entry in not_due:
            heapq.heappush(heap, entry)
        return found

    def _reclaim_lapsed(self) -> None:
        """Make messages whose lease lapsed fetchable again (the holder may still settle)."""
        store, now = self._store, self.clock.time()
        lapsed = [
            m
            for m in store.leased.values()
            if m.lease_expires is not None and m.lease_expires <= now
        ]
        for message in lapsed:
            message.lease_expires = None
            del store.leased[message.id]
            store.push(message)

    def _until_next_change(self, queues: Sequence[str]) -> float:
        """Seconds until an ETA falls due or a lease lapses: a wait must end by then."""
        now, wanted = self.clock.time(), set(queues)
        times = [
            m.lease_expires if m.lease_expires is not None else m.due_at
            for m in self._store.messages.values()
            if m.queue in wanted
        ]
        future = [t - now for t in times if t > now]
        return max(min(future, default=60.0), 0.001)

    def heartbeat(self) -> None:
        """Extend every lease this instance holds, lapsed ones included if not retaken."""
        store = self._store
        with store.cond:
            expires = self.clock.time() + self.lease_timeout
            for message in store.messages.values():
                if message.owner == self.consumer_id:
                    message.lease_expires = expires
                    store.leased[message.id] = message

    def _take_over(self, consumer_id: str) -> list[Delivery]:
        """Re-lease ``consumer_id``'s messages under new tokens, so its deliveries go stale."""
        store = self._store
        with store.cond:
            expires = self.clock.time() + self.lease_timeout
            taken = [m for m in store.messages.values() if m.owner == consumer_id]
            for message in taken:
                message.owner, message.token = self.consumer_id, next(store.ids)
                message.lease_expires = expires
                store.leased[message.id] = message
            return [MemoryDelivery(self, m) for m in taken]

    def purge(self, queue: str) -> int:
        store = self._store
        with store.cond:
            self._reclaim_lapsed()
            doomed = [m.id for m in store.messages.values() if _is_waiting_in(m, queue)]
            for message_id in doomed:
                del store.messages[message_id]
            store.heaps.pop(queue, None)  # what is left there is leased: no entry needed
            return len(doomed)

    def queue_size(self, queue: str) -> int:
        with self._store.cond:
            self._reclaim_lapsed()
            return sum(_is_waiting_in(m, queue) for m in self._store.messages.values())

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        with self._store.cond:
            return [letter for _, letter in itertools.islice(self._store.dead.values(), limit)]

    def redrive(self, dead_letter_id: str, body: bytes | None = None) -> bool:
        store = self._store
        with store.cond:
            entry = store.dead.pop(dead_letter_id, None)
            if entry is None:
                return False
            old = entry[0]
            message = _Message(
                next(store.ids),
                old.queue,
                old.body if body is None else body,
                old.priority,
                self.clock.time(),
            )
            store.messages[message.id] = message
            store.push(message)
            store.cond.notify_all()
            return True

    # -- broadcast channels ---------------------------------------------------
    def broadcast(self, channel: str, payload: bytes, *, maxlen: int | None = None) -> str:
        store = self._store
        keep = maxlen or self.broadcast_maxlen
        with store.cond:
            log = store.channels.setdefault(channel, deque())
            seq = next(store.ids)
            log.append((seq, bytes(payload)))
            while len(log) > keep:
                log.popleft()
            store.cond.notify_all()
        return str(seq)

    def broadcast_read(self, channel: str, after: str, timeout: float) -> list[tuple[str, bytes]]:
        start = parse_sequence_cursor(after)
        deadline = time.monotonic() + timeout
        store = self._store
        with store.cond:
            while True:
                log = store.channels.get(channel, ())
                found = [(str(seq), payload) for seq, payload in log if seq > start]
                remaining = deadline - time.monotonic()
                if found or remaining <= 0:
                    return found
                store.cond.wait(remaining)

    def broadcast_tail(self, channel: str) -> str:
        with self._store.cond:
            log = self._store.channels.get(channel)
            return str(log[-1][0]) if log else "0"


def _delete(store: _Store, message: _Message) -> None:
    del store.messages[message.id]
    store.leased.pop(message.id, None)


def _is_waiting_in(message: _Message, queue: str) -> bool:
    return message.queue == queue and message.lease_expires is None
