"""Redis result backend: Celery's keys and values, and pub/sub wake-ups for waiters.

Metas live at ``<prefix>celery-task-meta-<id>`` exactly as Celery's Redis backend stores
them, and every store is ``SET`` plus ``PUBLISH`` of the same value on the key's name in
one MULTI/EXEC, so Celery clients blocked in ``AsyncResult.get()`` wake up for chard's
results and chard's waiters wake up for Celery's. As in Celery, a ``global_keyprefix``
that does not end in one of ``:_-.`` gets a ``_`` appended.

A lost connection (a Redis restart or failover): storing a result retries per the
``retry_policy`` transport option, with Celery's Redis backend's keys and defaults
(``max_retries`` 20, ``interval_start`` 0, ``interval_step`` 1, ``interval_max`` 1), so
a worker's result outlives a restart instead of failing the task that produced it; a
waiter drops its pub/sub connection and subscribes again once Redis answers; plain reads
fail after redis-py's few quick retries with :class:`BackendConnectionError`.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar, cast

import redis
import redis.client
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from chard import states
from chard._redis import parse_redis_url
from chard.backends.base import Meta, ResultBackend
from chard.exceptions import BackendConnectionError, BackendError
from chard.protocol import serializers

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Celery's Redis backend defaults for retrying a store over a lost connection.
DEFAULT_RETRY_POLICY = {
    "max_retries": 20,
    "interval_start": 0,
    "interval_step": 1,
    "interval_max": 1,
}


#: Store a meta unless the stored one wins, in one round-trip: SET (PX) + PUBLISH, as
#: Celery does. ARGV: value, ttl in ms ('' = none), then the stored statuses that win
#: over the incoming state (from the base class's policy). Returns the winner, or nil.
_STORE = r"""
local current = redis.call('GET', KEYS[1])
if current and #ARGV > 2 then
  local ok, meta = pcall(cjson.decode, current)
  if ok and type(meta) == 'table' then
    for i = 3, #ARGV do
      if meta['status'] == ARGV[i] then return current end
    end
  end
end
if ARGV[2] == '' then
  redis.call('SET', KEYS[1], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return false
"""


class RedisResultBackend(ResultBackend):
    """Store metas in Redis strings; wait on their pub/sub channels instead of polling.

    Thread-safe. Each waiting thread keeps one pub/sub connection, and keeps its
    subscriptions open across calls for the same keys, so a result stored between the
    base class's read and the next wait is never missed (see :meth:`_wait_for_change`).
    """

    has_native_wait = True

    def __init__(
        self,
        url: str,
        *,
        expires: float | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(url, expires=expires, options=options)
        target = parse_redis_url(url, self.options, separate_prefix=True)
        self._prefix = target.keyprefix
        self._redacted = target.redacted
        retry = Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=3)
        self._client = redis.Redis.from_url(target.client_url, retry=retry, **target.socket_options)
        self.retry_policy = {**DEFAULT_RETRY_POLICY, **(self.options.get("retry_policy") or {})}
        self._store_script = self._client.register_script(_STORE)
        self._winners: dict[str, list[str]] = {}  # incoming state -> stored states that win
        self._local = threading.local()
        self._pubsubs_lock = threading.Lock()
        # Weak: a finished thread's pub/sub is collected, which closes its connection.
        self._pubsubs: weakref.WeakSet[redis.client.PubSub] = weakref.WeakSet()

    # -- primitives -----------------------------------------------------------
    def _get(self, key: str) -> bytes | None:
        with self._errors():
            return cast(bytes | None, self._client.get(self._key(key)))

    def _mget(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        with self._errors():
            return cast(list[bytes | None], self._client.mget([self._key(k) for k in keys]))

    def _set(self, key: str, value: bytes, ttl: float | None) -> None:
        """SET (with expiry) and PUBLISH on the key's name, atomically, as Celery does."""
        name = self._key(key)

        def store() -> None:
            pipe = self._client.pipeline(transaction=True)
            if ttl is None:
                pipe.set(name, value)
            elif float(ttl).is_integer() and ttl > 0:
                pipe.set(name, value, ex=int(ttl))
            else:  # fractions of a second: milliseconds, at least one
                pipe.set(name, value, px=max(1, round(ttl * 1000)))
            pipe.publish(name, value)
            pipe.execute()

        with self._errors():
            store()

    def _store_metas(self, metas: Sequence[Meta]) -> list[Meta]:
        """Store metas as the base class does, in one round trip, riding out a lost connection.

        Each read-compare-write is one script call (instead of a GET then a MULTI), with
        the base class's precedence (:meth:`_is_final_over`) passed in as the list of stored
        states that win; several go out in one pipeline. Safe to repeat (``retry_policy``):
        the scripts run again whole, and a waiter that was already woken simply reads the
        same value again.
        """
        ttl = "" if self.expires is None else str(max(1, round(self.expires * 1000)))
        calls: list[tuple[list[str], list[Any]]] = []
        for meta in metas:
            state = meta["status"]
            winners = self._winners.get(state)
            if winners is None:
                winners = [s for s in states.READY_STATES if self._is_final_over(s, state)]
                self._winners[state] = winners
            key = self._key(self.task_key(meta["task_id"]))
            calls.append(([key], [serializers.json_dumps(meta), ttl, *winners]))

        def store() -> list[Any]:
            if len(calls) == 1:
                keys, args = calls[0]
                return [self._store_script(keys=keys, args=args)]
            try:
                return pipelined()
            except redis.exceptions.NoScriptError:
                # A restarted Redis lost its scripts between the pipeline's check and its
                # commands: load the script again and repeat (the stores are idempotent).
                self._client.script_load(_STORE)
                return pipelined()

        def pipelined() -> list[Any]:
            pipe = self._client.pipeline(transaction=False)
            for keys, args in calls:
                self._store_script(keys=keys, args=args, client=pipe)
            return pipe.execute()

        kept = self._ensure(store)
        return [
            meta if raw is None else (self._load(cast(bytes, raw)) or meta)
            for meta, raw in zip(metas, kept, strict=True)
        ]

    def _delete(self, key: str) -> None:
        with self._errors():
            self._client.delete(self._key(key))

    def _incr(self, key: str, ttl: float | None) -> int:
        name = self._key(key)
        with self._errors():
            pipe = self._client.pipeline(transaction=True)
            pipe.incr(name)
            if ttl is not None:
                pipe.pexpire(name, max(1, round(ttl * 1000)))
            return int(pipe.execute()[0])

    def _wait_for_change(self, keys: Sequence[str], timeout: float) -> None:
        """Return when a store is published on one of ``keys``, or after ``timeout``.

        New keys are subscribed, and this returns as soon as Redis confirms: the caller
        then reads again, now with the subscription in place, so nothing stored before
        the subscription is missed. Keys no longer waited for are unsubscribed.
        """
        try:
            self._wait_on_pubsub(keys, timeout)
        except BackendConnectionError:
            # Its subscriptions died with the connection: start afresh on the next wait.
            self._drop_pubsub()
            raise

    def _wait_on_pubsub(self, keys: Sequence[str], timeout: float) -> None:
        pubsub = self._pubsub()
        wanted = {self._key(k).encode() for k in keys}
        channels = cast(dict[bytes, Any], pubsub.channels)
        current = set(channels) - cast(set[bytes], pubsub.pending_unsubscribe_channels)
        deadline = time.monotonic() + timeout
        with self._errors():
            stale = current - wanted
            if stale:
                pubsub.unsubscribe(*stale)  # type: ignore[no-untyped-call]  # unannotated upstream
            new = wanted - current
            if new:
                pubsub.subscribe(*new)
                # Confirmed even when the caller's time is nearly up: returning before
                # Redis has the subscription would let the next read race a store.
                confirm_by = time.monotonic() + max(timeout, 1.0)
                self._receive(pubsub, confirm_by, lambda m: _confirms(m, new))
                return
            self._receive(pubsub, deadline, lambda m: _is_news(m, wanted))

    def close(self) -> None:
        """Close every thread's pub/sub connection and the connection pool."""
        with self._pubsubs_lock:
            pubsubs = list(self._pubsubs)
            self._pubsubs.clear()
        for pubsub in pubsubs:
            pubsub.close()
        self._client.close()

    # -- helpers --------------------------------------------------------------
    def _key(self, key: str) -> str:
        return self._prefix + key

    def _pubsub(self) -> redis.client.PubSub:
        pubsub = getattr(self._local, "pubsub", None)
        if pubsub is None:
            pubsub = self._client.pubsub()  # type: ignore[no-untyped-call]  # unannotated upstream
            self._local.pubsub = pubsub
            with self._pubsubs_lock:
                self._pubsubs.add(pubsub)
        return cast(redis.client.PubSub, pubsub)

    def _drop_pubsub(self) -> None:
        pubsub = getattr(self._local, "pubsub", None)
        if pubsub is not None:
            self._local.pubsub = None
            with self._pubsubs_lock:
                self._pubsubs.discard(pubsub)
            pubsub.close()

    def _ensure(self, operation: Callable[[], T]) -> T:
        """Run a write that is safe to repeat, retrying a lost connection per ``retry_policy``."""
        max_retries = int(self.retry_policy["max_retries"])
        interval = float(self.retry_policy["interval_start"])
        for attempt in range(max_retries + 1):
            try:
                with self._errors():
                    value = operation()
            except BackendConnectionError as exc:
                if attempt >= max_retries:
                    raise
                logger.warning(
                    "Connection to Redis lost: Retry (%d/%d) in %.2fs: %s",
                    attempt + 1,
                    max_retries,
                    interval,
                    exc,
                )
                time.sleep(interval)
                interval = min(
                    interval + float(self.retry_policy["interval_step"]),
                    float(self.retry_policy["interval_max"]),
                )
                continue
            if attempt:
                logger.warning("Connection to Redis restored after %d retries", attempt)
            return value
        raise AssertionError("unreachable: the last attempt returns or raises")

    @staticmethod
    def _receive(pubsub: redis.client.PubSub, deadline: float, is_done: Any) -> None:
        """Read pub/sub messages until ``is_done(message)`` returns True or ``deadline``."""
        while (remaining := deadline - time.monotonic()) > 0:
            message = pubsub.get_message(timeout=remaining)
            if message is not None and is_done(message):
                return

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn redis-py errors into :class:`BackendError` naming the (redacted) URL."""
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise BackendConnectionError(
                f"cannot reach the Redis result backend at {self._redacted!r}: {exc}; is "
                "redis-server running, and are host, port, password and db in the URL right?"
            ) from exc
        except redis.RedisError as exc:
            raise BackendError(f"Redis result backend at {self._redacted!r} failed: {exc}") from exc


def _is_news(message: dict[str, Any], channels: set[bytes]) -> bool:
    return message["type"] == "message" and message["channel"] in channels


def _confirms(message: dict[str, Any], pending: set[bytes]) -> bool:
    """Tick off one subscribe confirmation; True once all of ``pending`` are confirmed."""
    if message["type"] == "subscribe":
        pending.discard(message["channel"])
    return not pending
