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
from typing import Any, cast

from chard._redis.client import RedisErrors, WatchError
from chard.brokers.base import clamp_priority
from chard.protocol.pidbox import pidbox_topic

logger = logging.getLogger(__name__)

#: kombu's priority steps and the separator of its bucket key names.
PRIORITY_STEPS = (0, 3, 6, 9)
BUCKET_SEP = "\x06\x16"
#: kombu's bucket of each priority 0-9: the largest step not above it.
_STEP_OF = tuple(max(step for step in PRIORITY_STEPS if step <= p) for p in range(10))


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
            table = self._client.smembers(self._key(f"_kombu.binding.{exchange}"))
            rows = [row.decode().split(BUCKET_SEP) for row in cast(set[bytes], table)]
            queues = [row[2] for row in rows if len(row) == 3 and row[0] in (routing_key, "")]
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
