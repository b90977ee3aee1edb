"""An in-process result backend for tests, eager mode and single-process apps.

It is a full implementation, not a stub: it honours TTLs and wakes waiters as soon
as a result is stored, so it passes the same contract suite as Redis and SQLite.
State lives in the instance; two ``memory://`` backends do not share results.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from chard._utils.clock import Clock, SystemClock
from chard.backends.base import ResultBackend

#: Seconds between two sweeps of expired entries; reads already hide them.
SWEEP_INTERVAL = 60.0


@dataclass(slots=True)
class _Entry:
    value: bytes
    #: ``clock.monotonic()`` after which the entry is gone; None never expires.
    expires_at: float | None
    #: Value of the backend's write counter when this entry was written.
    version: int


class MemoryResultBackend(ResultBackend):
    """Keep results in a dict guarded by one lock; thread-safe.

    Every write bumps a counter and notifies a :class:`threading.Condition`, so
    :meth:`wait_for` returns as soon as the result is stored instead of polling.
    """

    has_native_wait = True

    def __init__(
        self,
        url: str = "memory://",
        *,
        expires: float | None = None,
        options: Mapping[str, Any] | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(url, expires=expires, options=options)
        self._clock: Clock = clock or SystemClock()
        self._data: dict[str, _Entry] = {}
        self._changed = threading.Condition(threading.Lock())
        self._version = 0
        self._next_sweep = self._clock.monotonic() + SWEEP_INTERVAL
        # The write counter each thread saw at its last read: a write that lands
        # between that read and _wait_for_change() must not be missed.
        self._seen = threading.local()

    # -- primitives ---------------------------------------------------------
    def _get(self, key: str) -> bytes | None:
        return self._mget([key])[0]

    def _mget(self, keys: Sequence[str]) -> list[bytes | None]:
        with self._changed:
            self._seen.version = self._version
            now = self._clock.monotonic()
            return [self._live_value(key, now) for key in keys]

    def _set(self, key: str, value: bytes, ttl: float | None) -> None:
        with self._changed:
            self._write(key, value, ttl)

    def _delete(self, key: str) -> None:
        with self._changed:
            self._data.pop(key, None)

    def _incr(self, key: str, ttl: float | None) -> int:
        with self._changed:
            current = self._live_value(key, self._clock.monotonic())
            total = int(current or 0) + 1
            self._write(key, str(total).encode(), ttl)
            return total

    def _wait_for_change(self, keys: Sequence[str], timeout: float) -> None:
        """Block until one of ``keys`` is written after this thread's last read."""
        with self._changed:
            seen = getattr(self._seen, "version", self._version)
            self._changed.wait_for(lambda: self._written_since(keys, seen), timeout)

    def close(self) -> None:
        """Drop every stored value."""
        with self._changed:
            self._data.clear()

    # -- helpers (call with the lock held) ------------------------------------
    def _live_value(self, key: str, now: float) -> bytes | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        if entry.expires_at is not None and entry.expires_at <= now:
            del self._data[key]
            return None
        return entry.value

    def _write(self, key: str, value: bytes, ttl: float | None) -> None:
        now = self._clock.monotonic()
        self._version += 1
        expires_at = None if ttl is None else now + ttl
        self._data[key] = _Entry(value, expires_at, self._version)
        self._changed.notify_all()
        if now >= self._next_sweep:
            self._sweep(now)

    def _sweep(self, now: float) -> None:
        """Delete expired entries that nobody read, so the dict does not grow forever."""
        expired = [
            key
            for key, entry in self._data.items()
            if entry.expires_at is not None and entry.expires_at <= now
        ]
        for key in expired:
            del self._data[key]
        self._next_sweep = now + SWEEP_INTERVAL

    def _written_since(self, keys: Sequence[str], version: int) -> bool:
        for key in keys:
            entry = self._data.get(key)
            if entry is not None and entry.version > version:
                return True
        return False
