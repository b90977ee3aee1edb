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
waiter drops the pub/sub connection, subscribes again once Redis answers and reads
every key it waits for again (what was published meanwhile is gone); plain reads fail
after redis-py's few quick retries with :class:`BackendConnectionError`.

Waiting (see :mod:`chard._redis.listener`): a waiter reads the keys first, and a
result already stored costs that one ``GET``/``MGET`` and nothing else. For what is
still pending it subscribes to the keys' channels, waits for Redis to confirm, reads
those keys once more, and then takes each result from the ``PUBLISH`` that carries it:
at most two reads per result, whether one task or a group of thousands is waited for.
Sending subscribes to nothing, so a ``delay()`` costs the broker's command alone.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, TypeVar, cast

from chard import states
from chard._redis.client import RedisErrors, open_client
from chard._redis.lane import Lane
from chard._redis.listener import Cursor, Listener
from chard._redis.url import parse_redis_url
from chard.backends.base import CeleryChordJoin, Meta, ResultBackend, encode_exception
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


#: Store metas unless the stored ones win, all in one script call: per key ``SET`` (PX)
#: + ``PUBLISH``, as Celery does. KEYS: the metas' keys. ARGV: ttl in ms ('' = none), then
#: per key its value and the stored statuses that win over the incoming state (from the
#: base class's policy), comma-separated. Returns per key the stored value that won, or
#: false (stored).
_STORE = r"""
local ttl, kept = ARGV[1], {}
for i, key in ipairs(KEYS) do
  local value, winners = ARGV[2 * i], ARGV[2 * i + 1]
  local current = winners ~= '' and redis.call('GET', key)
  kept[i] = false
  if current then
    local ok, meta = pcall(cjson.decode, current)
    if ok and type(meta) == 'table' and type(meta['status']) == 'string' and
        string.find(',' .. winners .. ',', ',' .. meta['status'] .. ',', 1, true) then
      kept[i] = current
    end
  end
  if not kept[i] then
    if ttl == '' then
      redis.call('SET', key, value)
    else
      redis.call('SET', key, value, 'PX', ttl)
    end
    redis.call('PUBLISH', key, value)
  end
end
return kept
"""


#: Celery's Redis chord join (celery/backends/redis.py, 5.7), for a mixed fleet. KEYS:
#: the group key's ``.j`` (zset of ``[1, id, state, result]`` by group_index), ``.t``
#: (members added later), ``.s`` (header size), ``.d`` (ends seen, so a redelivered
#: member counts once), ``.c`` (the claim of whoever sends the body, then ``done``).
#: ARGV: task id, member, group index, ttl s (0: none), claim ttl s, claim token.
#: Returns the members when this end completed the chord and claimed it, else nil.
_CELERY_CHORD_PART = r"""
if redis.call('GET', KEYS[5]) == 'done' then return false end
if redis.call('SADD', KEYS[4], ARGV[1] .. ':' .. ARGV[3]) == 1 then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
end
local ready = redis.call('ZCARD', KEYS[1])
if tonumber(ARGV[4]) > 0 then
  for i = 1, 4 do redis.call('EXPIRE', KEYS[i], ARGV[4]) end
end
local size = redis.call('GET', KEYS[3])
if not size or ready ~= tonumber(size) + tonumber(redis.call('GET', KEYS[2]) or '0') then
  return false
end
if not redis.call('SET', KEYS[5], ARGV[6], 'NX', 'EX', ARGV[5]) then return false end
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""

#: Celery's chord clean-up: KEYS as above; ARGV: claim token, seconds to keep ``done``.
_CELERY_CHORD_DONE = r"""
if redis.call('GET', KEYS[5]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
redis.call('SET', KEYS[5], 'done', 'EX', ARGV[2])
return 1
"""

#: Seconds a claim on sending a chord's body lasts, and a done chord is remembered
#: (Celery's floor for both is 5 s and 300 s).
CHORD_CLAIM_SECONDS = 60
CHORD_DONE_SECONDS = 300


class RedisResultBackend(ResultBackend):
    """Store metas in Redis strings; wait on their pub/sub channels instead of polling.

    Thread-safe. The process shares one pub/sub connection (:mod:`chard._redis.listener`):
    a waiter that finds results pending watches them (:meth:`watch`), confirms, reads once more,
    then takes each result from the ``PUBLISH`` that carries it.
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
        self._errors = RedisErrors(
            "Redis result backend",
            target.redacted,
            unreachable=BackendConnectionError,
            failed=BackendError,
            url_name="result backend URL",
        )
        self._client = open_client(target)
        self.retry_policy = {**DEFAULT_RETRY_POLICY, **(self.options.get("retry_policy") or {})}
        self._store_script = self._client.register_script(_STORE)
        self._chord_part_script = self._client.register_script(_CELERY_CHORD_PART)
        self._chord_done_script = self._client.register_script(_CELERY_CHORD_DONE)
        self._winners: dict[str, str] = {}  # incoming state -> stored states that win, joined
        self._lane = Lane(self._client)  # reads on a waiter's path: no pool checkout
        self._listener = Listener(self._client)
        self._local = threading.local()  # this thread's Cursor in its current wait

    # -- primitives -----------------------------------------------------------
    def _get(self, key: str) -> bytes | None:
        with self._errors():
            return cast(bytes | None, self._lane.execute("GET", self._key(key)))

    def _mget(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        with self._errors():
            return cast(list[bytes | None], self._lane.execute("MGET", *map(self._key, keys)))

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

    def _store_metas(self, metas: Sequence[tuple[Meta, bytes]]) -> list[Meta]:
        """Store metas as the base class does, in one script call, riding out a lost connection.

        Each read-compare-write happens in the script (instead of a GET then a MULTI), with
        the base class's precedence (:meth:`_is_final_over`) passed in as the stored states
        that win. Safe to repeat (``retry_policy``): the script runs again whole, and a
        waiter that was already woken simply reads the same value again.
        """
        ttl = "" if self.expires is None else str(max(1, round(self.expires * 1000)))
        keys: list[str] = []
        args: list[str | bytes] = [ttl]
        for meta, data in metas:
            state = meta["status"]
            winners = self._winners.get(state)
            if winners is None:
                won = [s for s in states.READY_STATES if self._is_final_over(s, state)]
                winners = self._winners[state] = ",".join(sorted(won))
            keys.append(self._key(self.task_key(meta["task_id"])))
            args += (data, winners)
        script = self._store_script
        kept = self._ensure(lambda: self._lane.run_script(script, keys, args))
        return [
            meta if not raw else (self._load(cast(bytes, raw)) or meta)
            for (meta, _), raw in zip(metas, cast(list[Any], kept), strict=True)
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

    # -- Celery's chord bookkeeping (chard_celery_compat) ------------------------
    def set_chord_size(self, group_id: str, size: int) -> None:
        ttl = int(self.expires) if self.expires else None
        with self._errors():
            self._client.set(self._key(self.group_key(group_id) + ".s"), size, ex=ttl)

    def celery_chord_part(
        self, group_id: str, task_id: str, state: str, result: Any, group_index: int | None
    ) -> CeleryChordJoin | None:
        """Run Celery's join as one script; not retried (a lost reply must not re-claim)."""
        value = encode_exception(result) if isinstance(result, BaseException) else result
        member = serializers.json_dumps([1, task_id, state, value])
        claim = uuid.uuid4().hex
        score = "+inf" if group_index is None else str(group_index)
        ttl = int(self.expires) if self.expires else 0
        args: list[str | bytes | int] = [task_id, member, score, ttl, CHORD_CLAIM_SECONDS, claim]
        with self._errors():
            raw = self._chord_part_script(keys=self._chord_keys(group_id), args=args)
        if not raw:
            return None
        members = [serializers.json_loads(m) for m in cast(list[bytes], raw)]
        return CeleryChordJoin(group_id, claim, [(m[1], m[2], m[3]) for m in members])

    def celery_chord_done(self, join: CeleryChordJoin) -> None:
        keys = self._chord_keys(join.group_id)
        with self._errors():
            self._chord_done_script(keys=keys, args=[join.claim, CHORD_DONE_SECONDS])

    def _chord_keys(self, group_id: str) -> list[str]:
        base = self._key(self.group_key(group_id))
        return [base + suffix for suffix in (".j", ".t", ".s", ".d", ".c")]

    # -- listening ----------------------------------------------------------
    def watch(self, task_ids: Iterable[str]) -> None:
        """Subscribe to these tasks' result channels, without waiting for Redis's reply."""
        try:
            with self._errors():
                self._listener.watch([self._channel(self.task_key(t)) for t in task_ids])
        except BackendConnectionError as exc:
            # The wait subscribes again (and says so if Redis stays unreachable).
            logger.debug("Could not subscribe to results yet: %s", exc)

    def unwatch(self, task_ids: Iterable[str]) -> None:
        self._listener.release([self._channel(self.task_key(t)) for t in task_ids])

    def _listen(self, keys: Sequence[str], deadline: float | None) -> Mapping[str, bytes]:
        """Wait for Redis to confirm the subscriptions; return the results heard already."""
        remaining = 0.0 if deadline is None else deadline - time.monotonic()
        # Confirmed even when the caller's time is nearly up: reading before Redis has
        # the subscription would let a store slip between the read and the wait.
        confirm_by = time.monotonic() + max(remaining, 1.0)
        with self._errors():
            cursor = self._listener.confirm([self._channel(k) for k in keys], confirm_by)
            self._local.cursor = cursor
            return self._heard(cursor, keys, 0.0)

    def _wait_for_values(self, keys: Collection[str], timeout: float) -> Mapping[str, bytes]:
        """Return the results published on ``keys`` since the last look (``{}``: none yet)."""
        with self._errors():
            return self._heard(cast(Cursor, self._local.cursor), keys, timeout)

    def _heard(self, cursor: Cursor, keys: Collection[str], timeout: float) -> dict[str, bytes]:
        size = len(self._prefix)
        heard = self._listener.wait(cursor, timeout)
        values = {channel.decode()[size:]: value for channel, value in heard}
        return {key: value for key, value in values.items() if key in keys}

    def close(self) -> None:
        """Close the pub/sub connection and the connection pool."""
        self._listener.close()
        self._lane.close()
        self._client.close()

    # -- helpers --------------------------------------------------------------
    def _key(self, key: str) -> str:
        return self._prefix + key

    def _channel(self, key: str) -> bytes:
        return (self._prefix + key).encode()

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
