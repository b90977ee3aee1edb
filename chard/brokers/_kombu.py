"""kombu's Redis layout, and what a chard broker does for the Celery workers sharing it.

kombu's names (priority buckets, the ready lists) are used by every part of
:mod:`chard.brokers.redis`; the rest is only for a mixed Celery/chard fleet
(``chard_celery_compat``): Celery's remote-control casts on kombu's pub/sub topic, and
kombu's ``unacked`` hash that a dead Celery worker leaves behind (see the README's
"A mixed fleet"). :class:`KombuInterop` is mixed into the Redis broker, whose client,
prefix and error translation it uses.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any, cast

from chard._redis.client import RedisErrors, WatchError
from chard.brokers.base import clamp_priority
from chard.protocol.pidbox import REPLY_EXCHANGE, pidbox_topic

logger = logging.getLogger(__name__)

#: kombu's priority steps and the separator of its bucket key names.
PRIORITY_STEPS = (0, 3, 6, 9)
BUCKET_SEP = "\x06\x16"
#: kombu's bucket of each priority 0-9: the largest step not above it.
_STEP_OF = tuple(max(step for step in PRIORITY_STEPS if step <= p) for p in range(10))
#: kombu 5.7's ``REFRESH_BINDING``: add a binding row, and push its table's deadline (ms
#: from now, by the server's clock) in the set its sweeps read; a binding of an expiring
#: queue (a client's reply queue) goes with its table once no one refreshed it in time.
_REFRESH_BINDING = """
redis.call('SADD', KEYS[1], ARGV[1])
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZADD', KEYS[2], 'GT', ms + tonumber(ARGV[3]), ARGV[2])
"""
#: kombu's ``MIN_BINDING_TTL`` (ms).
_BINDING_TTL = 3_600_000


def priority_step(priority: int) -> int:
    """Return kombu's bucket for ``priority``: the largest step not above it (0-9 clamped)."""
    return _STEP_OF[clamp_priority(priority)]


def ready_key(queue: str, step: int) -> str:
    """Return kombu's (unprefixed) list name for ``queue``'s priority bucket ``step``."""
    return queue if step == 0 else f"{queue}{BUCKET_SEP}{step}"


class KombuInterop:
    """Celery's remote control and kombu's ``unacked`` restore, for the Redis broker."""

    _client: Any  # redis.Redis (the redis package is imported only in chard._redis)
    _prefix: str
    _errors: RedisErrors
    _pidbox: Any = None  # a pub/sub connection, subscribed on first use
    _reply_oid: str | None = None  # this process's routing key for Celery's replies

    def _key(self, name: str) -> str:
        return self._prefix + name

    def celery_cast(self, payload: bytes) -> None:
        """``PUBLISH`` on kombu's fanout topic ``<prefix>/<db>.celery.pidbox``."""
        with self._errors():
            self._client.publish(self._pidbox_topic(), payload)

    def celery_casts(self, timeout: float) -> list[bytes]:
        """Subscribe to the pidbox topic on first use (own connection); read what came."""
        heard: list[bytes] = []
        with self._errors():
            try:
                if self._pidbox is None:
                    self._pidbox = self._client.pubsub(ignore_subscribe_messages=True)
                    self._pidbox.subscribe(self._pidbox_topic())
                message = self._pidbox.get_message(timeout=timeout)
                while message is not None:
                    if message.get("type") == "message":
                        heard.append(cast(bytes, message["data"]))
                    message = self._pidbox.get_message(timeout=0)
            except Exception:
                self._close_pidbox()  # subscribe again on the next call
                raise
        return heard

    def celery_reply(self, reply_to: Mapping[str, str], payload: bytes) -> None:
        """kombu's direct exchange: ``LPUSH`` to each queue bound with the routing key."""
        exchange = reply_to.get("exchange") or REPLY_EXCHANGE
        routing_key = reply_to.get("routing_key", "")
        with self._errors():
            queues = [q for key, q in self._bindings(exchange) if key == routing_key]
            for queue in queues:  # none: the client's binding went, nobody to tell
                self._client.lpush(self._key(ready_key(queue, 0)), payload)

    def celery_reply_to(self) -> dict[str, str]:
        """Bind this process's reply list to kombu's reply exchange (refreshed each call)."""
        if self._reply_oid is None:
            self._reply_oid = f"chard.{uuid.uuid4().hex}"
        row = BUCKET_SEP.join([self._reply_oid, "", self._reply_queue()])
        keys = [
            self._key(f"_kombu.binding.{REPLY_EXCHANGE}"),
            self._key("_kombu.binding_deadlines"),
        ]
        with self._errors():
            self._client.eval(_REFRESH_BINDING, 2, *keys, row, REPLY_EXCHANGE, _BINDING_TTL)
        return {"exchange": REPLY_EXCHANGE, "routing_key": self._reply_oid}

    def celery_replies(self, timeout: float) -> list[bytes]:
        """Take what Celery workers pushed to this process's reply list."""
        if self._reply_oid is None:
            self.celery_reply_to()
        key = self._key(ready_key(self._reply_queue(), 0))
        heard: list[bytes] = []
        with self._errors():
            if timeout > 0:
                got = self._client.brpop([key], timeout=timeout)
                if got is None:
                    return heard
                heard.append(cast(bytes, got[1]))
            while (item := self._client.rpop(key)) is not None:
                heard.append(cast(bytes, item))
        return heard

    def _reply_queue(self) -> str:
        return f"{self._reply_oid}.{REPLY_EXCHANGE}"

    def _bindings(self, exchange: str) -> list[tuple[str, str]]:
        """Return (routing key, queue) of each row of kombu's binding table of ``exchange``."""
        table = self._client.smembers(self._key(f"_kombu.binding.{exchange}"))
        rows = [row.decode().split(BUCKET_SEP) for row in cast(set[bytes], table)]
        return [(row[0], row[2]) for row in rows if len(row) == 3]

    def celery_restore_unacked(self, visibility_timeout: float, limit: int = 100) -> int:
        """kombu's ``restore_visible``: under its ``unacked_mutex``, each of the oldest
        ``unacked_index`` entries older than the timeout goes back to its queue's tail
        marked ``redelivered``, in a ``WATCH`` transaction as kombu does (a Celery
        worker acking it meanwhile wins)."""
        mutex, token = self._key("unacked_mutex"), uuid.uuid4().hex
        with self._errors():
            if not self._client.set(mutex, token, nx=True, px=300_000):
                return 0  # another process (Celery's or chard's) is restoring
            try:
                ceiling = time.time() - visibility_timeout
                index = self._key("unacked_index")
                tags = self._client.zrangebyscore(index, 0, ceiling, start=0, num=limit)
                return sum(self._restore_celery(tag) for tag in cast(list[bytes], tags))
            finally:
                if self._client.get(mutex) == token.encode():
                    self._client.delete(mutex)

    def _restore_celery(self, tag: bytes) -> int:
        unacked = self._key("unacked")
        with self._client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(unacked)
                raw = cast(bytes | None, pipe.hget(unacked, tag))
                pipe.multi()
                pipe.zrem(self._key("unacked_index"), tag)
                pipe.hdel(unacked, tag)
                if raw is not None:
                    for key, body in self._celery_redelivery(raw):
                        pipe.rpush(key, body)
                pipe.execute()
            except WatchError:
                return 0  # acked or restored meanwhile
        return 1 if raw is not None else 0

    def _celery_redelivery(self, raw: bytes) -> list[tuple[str, bytes]]:
        """Return (ready list, envelope marked redelivered) for a kombu ``unacked`` value.

        Celery publishes on the default exchange (``""``: the routing key is the queue);
        another exchange is resolved through kombu's binding table, as kombu does.
        """
        message, exchange, routing_key = json.loads(raw)
        message["headers"]["redelivered"] = True
        message["properties"].setdefault("delivery_info", {})["redelivered"] = True
        step = priority_step(int(message["properties"].get("priority") or 0))
        queues = [routing_key]
        if exchange:
            queues = [q for key, q in self._bindings(exchange) if key in (routing_key, "")]
        body = json.dumps(message).encode()
        return [(self._key(ready_key(queue, step)), body) for queue in queues]

    def _pidbox_topic(self) -> str:
        db = int(self._client.connection_pool.connection_kwargs.get("db") or 0)
        return self._prefix + pidbox_topic(db)

    def _close_pidbox(self) -> None:
        if self._pidbox is not None:
            pidbox, self._pidbox = self._pidbox, None
            try:
                pidbox.close()
            except Exception:  # closing a connection that already failed
                logger.debug("Closing the pidbox subscription failed", exc_info=True)
