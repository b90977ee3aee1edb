"""The Redis schedule store: beat's state on the broker's Redis, behind its key prefix.

Keys (after the broker's ``global_keyprefix``): ``chard.beat.entries`` (hash name -> JSON
definition), ``chard.beat.runs`` (hash name -> ``"<last run µs>:<total runs>"``),
``chard.beat.lease`` (string owner, with a PX expiry) and ``chard.beat.firing.<slot key>``
(``SET NX EX``). Lease and run-state updates are Lua scripts, so check-and-set is atomic and
expiry runs on the Redis server's clock (beats on different hosts need no clock agreement).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from chard._redis.client import RedisErrors, open_client
from chard._redis.url import parse_redis_url
from chard._utils.clock import Clock
from chard.beat.store import ScheduleStore
from chard.exceptions import BrokerConnectionError, BrokerError

# Acquire the lease if free, extend it if ours: one round-trip, atomic.
_LEASE = """
local owner = redis.call('GET', KEYS[1])
if not owner then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if owner == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""
# Raise "<at>:<count>" field-wise, never lowering either (a stale beat cannot rewind).
_RUN = """
local at, count = tonumber(ARGV[2]), tonumber(ARGV[3])
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current then
  local sep = string.find(current, ':', 1, true)
  at = math.max(at, tonumber(string.sub(current, 1, sep - 1)))
  count = math.max(count, tonumber(string.sub(current, sep + 1)))
end
redis.call('HSET', KEYS[1], ARGV[1], string.format('%d:%d', at, count))
return 0
"""


class RedisScheduleStore(ScheduleStore):
    """Beat's state in Redis: for beats on any number of hosts sharing one broker.

    Args:
        url: The broker's ``redis://``, ``rediss://`` or ``unix://`` URL.
        options: The broker's transport options (``global_keyprefix`` is honoured).
        clock: Unused for expiry (Redis's clock decides); kept for the common interface.
    """

    def __init__(
        self, url: str, options: Mapping[str, Any] | None = None, clock: Clock | None = None
    ) -> None:
        super().__init__(clock)
        target = parse_redis_url(url, options)
        self._prefix = target.keyprefix
        self._redacted = target.redacted
        self._errors = RedisErrors(
            "Redis schedule store",
            target.redacted,
            unreachable=BrokerConnectionError,
            failed=BrokerError,
            url_name="broker URL",
        )
        self._client = open_client(target)
        self._entries = self._key("chard.beat.entries")
        self._runs = self._key("chard.beat.runs")
        self._lease = self._key("chard.beat.lease")
        self._lease_script = self._client.register_script(_LEASE)
        self._release_script = self._client.register_script(_RELEASE)
        self._run_script = self._client.register_script(_RUN)

    def __repr__(self) -> str:
        return f"<RedisScheduleStore {self._redacted}>"

    def _read_definitions(self) -> dict[str, str]:
        with self._errors():
            raw = cast(dict[bytes, bytes], self._client.hgetall(self._entries))
        return {k.decode(): v.decode() for k, v in raw.items()}

    def _write_definition(self, name: str, text: str) -> None:
        with self._errors():
            self._client.hset(self._entries, name, text)

    def _delete_definition(self, name: str) -> bool:
        with self._errors():
            pipe = self._client.pipeline(transaction=True)
            pipe.hdel(self._entries, name)
            pipe.hdel(self._runs, name)
            deleted, _ = pipe.execute()
        return bool(deleted)

    def _read_runs(self) -> dict[str, tuple[int, int]]:
        with self._errors():
            raw = cast(dict[bytes, bytes], self._client.hgetall(self._runs))
        runs: dict[str, tuple[int, int]] = {}
        for name, value in raw.items():
            at, _, count = value.decode().partition(":")
            runs[name.decode()] = (int(at), int(count))
        return runs

    def _write_run(self, name: str, at_us: int, count: int) -> None:
        with self._errors():
            self._run_script(keys=[self._runs], args=[name, at_us, count])

    def _acquire_lease(self, owner: str, timeout: float) -> bool:
        with self._errors():
            millis = max(1, round(timeout * 1000))
            won = self._lease_script(keys=[self._lease], args=[owner, millis])
        return bool(won)

    def _release_lease(self, owner: str) -> None:
        with self._errors():
            self._release_script(keys=[self._lease], args=[owner])

    def _read_lease(self) -> tuple[str, float] | None:
        with self._errors():
            pipe = self._client.pipeline(transaction=True)
            pipe.get(self._lease)
            pipe.pttl(self._lease)
            owner, millis = pipe.execute()
        if owner is None or millis is None or millis < 0:
            return None
        return owner.decode(), millis / 1000.0

    def _claim(self, key: str, ttl: float) -> bool:
        with self._errors():
            added = self._client.set(
                self._key(f"chard.beat.firing.{key}"), b"1", nx=True, ex=max(1, int(ttl))
            )
        return bool(added)

    def close(self) -> None:
        """Close the connection pool; the next call reconnects."""
        self._client.close()

    def _key(self, name: str) -> str:
        return self._prefix + name
