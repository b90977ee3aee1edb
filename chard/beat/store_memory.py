"""The memory schedule store: the whole store contract in one process's memory.

It backs the store contract tests and ``memory://`` apps, where beat and the Python API
of one process share it (:func:`chard.beat.stores.open_schedule_store` keeps one per app).
"""

from __future__ import annotations

import threading

from chard._utils.clock import Clock
from chard.beat.store import ScheduleStore


class MemoryScheduleStore(ScheduleStore):
    """The whole contract in process memory: for tests and ``memory://`` apps."""

    def __init__(self, clock: Clock | None = None) -> None:
        super().__init__(clock)
        self._lock = threading.Lock()
        self._definitions: dict[str, str] = {}
        self._runs: dict[str, tuple[int, int]] = {}
        self._lease: tuple[str, float] | None = None
        self._claims: dict[str, float] = {}

    def _read_definitions(self) -> dict[str, str]:
        with self._lock:
            return dict(self._definitions)

    def _write_definition(self, name: str, text: str) -> None:
        with self._lock:
            self._definitions[name] = text

    def _delete_definition(self, name: str) -> bool:
        with self._lock:
            self._runs.pop(name, None)
            return self._definitions.pop(name, None) is not None

    def _read_runs(self) -> dict[str, tuple[int, int]]:
        with self._lock:
            return dict(self._runs)

    def _write_run(self, name: str, at_us: int, count: int) -> None:
        with self._lock:
            old_at, old_count = self._runs.get(name, (at_us, count))
            self._runs[name] = (max(old_at, at_us), max(old_count, count))

    def _acquire_lease(self, owner: str, timeout: float) -> bool:
        now = self.clock.time()
        with self._lock:
            if self._lease is None or self._lease[0] == owner or self._lease[1] <= now:
                self._lease = (owner, now + timeout)
                return True
            return False

    def _release_lease(self, owner: str) -> None:
        with self._lock:
            if self._lease is not None and self._lease[0] == owner:
                self._lease = None

    def _read_lease(self) -> tuple[str, float] | None:
        now = self.clock.time()
        with self._lock:
            if self._lease is None or self._lease[1] <= now:
                return None
            return self._lease[0], self._lease[1] - now

    def _claim(self, key: str, ttl: float) -> bool:
        now = self.clock.time()
        with self._lock:
            self._claims = {k: t for k, t in self._claims.items() if t > now}
            if key in self._claims:
                return False
            self._claims[key] = now + ttl
            return True
