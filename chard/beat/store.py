"""Schedule stores: beat's shared, editable state in the broker's database.

The store always lives in the broker (never in a local file such as ``beat -s``): the lease and
the claims can only pick one sender if every beat, on any host, reaches the same ones. A store
holds four things, so that beat processes and the ``chard beat schedule`` command agree without
talking to each other:

- **definitions**: entry name -> JSON (task, schedule, args, kwargs, options, ``enabled`` and
  ``origin``). ``origin`` is ``"config"`` for entries synced from ``beat_schedule`` /
  ``add_periodic_task`` at start-up, and ``"store"`` for entries added through the store (CLI or
  Python API). People edit these while beat runs; beat reloads them every second or so.
- **run state**: name -> (last run, total runs), written only by the beat that sent the run.
  Updates are monotonic (a later ``last_run_at`` never goes back), so a stale beat cannot rewind
  the schedule. Restarting beat resumes from here: no burst of missed runs and no skipped run.
- **the leader lease**: one owner id with an expiry; only the owner sends.
- **firings**: one key per sent slot, ``<entry name>:<scheduled ISO time>``, claimed with
  insert-if-absent *before* sending. Two beats that both believe they lead (a paused leader whose
  lease lapsed) compute the same key for the same slot, and only one claim succeeds.

:class:`ScheduleStore` holds the policy (serialising entries, merging config with the store);
the SQLite, Redis and memory subclasses (``store_sqlite``, ``store_redis``, ``store_memory``)
implement a handful of primitives, and :func:`chard.beat.stores.open_schedule_store` picks one by
the broker's URL. This module imports none of them: they import it.

A new broker kind plugs in with one subclass over its own database and one line in ``stores``:
PostgreSQL as SQLite's tables (``INSERT ... ON CONFLICT``, expiry on the server's ``now()``).
RabbitMQ has no key-value store, so it needs primitives of its own (an exclusive queue is a
natural lease: the broker frees it when the holder's connection dies). Until a kind has a store,
beat refuses its broker with a clear error; it never falls back to a local file.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from chard._utils.clock import Clock, SystemClock
from chard.beat.scheduler import ScheduleEntry, entries_from_config
from chard.beat.store_records import (
    FIRING_RETENTION,
    entry_from_record,
    entry_to_record,
    from_micros,
    slot_key,
    to_micros,
)

if TYPE_CHECKING:
    from chard.app import Celery

__all__ = [
    "LeaseHolder",
    "ScheduleStore",
    "entry_from_record",
    "entry_to_record",
    "slot_key",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseHolder:
    """Who holds the leader lease, and for how long without renewing it."""

    owner: str  # host:pid:random, as Beat.owner
    expires_in: float  # seconds


class ScheduleStore(ABC):
    """Beat's shared state: definitions, run state, the leader lease and firing claims.

    Subclasses implement the ``_`` primitives; every primitive is atomic on its own and safe to
    call from several threads and processes. Methods may raise
    :class:`~chard.exceptions.BrokerConnectionError` when the database is unreachable or busy;
    beat logs it and retries on its next loop.
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or SystemClock()

    # -- primitives -----------------------------------------------------------
    @abstractmethod
    def _read_definitions(self) -> dict[str, str]:
        """Return every definition as name -> JSON text."""

    @abstractmethod
    def _write_definition(self, name: str, text: str) -> None:
        """Insert or replace one definition."""

    @abstractmethod
    def _delete_definition(self, name: str) -> bool:
        """Delete a definition and its run state; return whether it existed."""

    @abstractmethod
    def _read_runs(self) -> dict[str, tuple[int, int]]:
        """Return run state as name -> (last run in epoch microseconds, total runs)."""

    @abstractmethod
    def _write_run(self, name: str, at_us: int, count: int) -> None:
        """Raise the stored run state of ``name`` to ``at_us``/``count`` (never lower it)."""

    @abstractmethod
    def _acquire_lease(self, owner: str, timeout: float) -> bool:
        """Take the lease if free or lapsed, or extend it if ``owner`` holds it; return success."""

    @abstractmethod
    def _release_lease(self, owner: str) -> None:
        """Give the lease up if ``owner`` holds it."""

    @abstractmethod
    def _read_lease(self) -> tuple[str, float] | None:
        """Return the lease's (owner, seconds left), or None if nobody holds it."""

    @abstractmethod
    def _claim(self, key: str, ttl: float) -> bool:
        """Record ``key`` if absent (kept ``ttl`` seconds); return whether this call added it."""

    def close(self) -> None:  # noqa: B027 - optional hook: the memory store holds nothing
        """Release connections; the store reopens them on next use."""

    # -- definitions ----------------------------------------------------------
    def definitions(self) -> dict[str, dict[str, Any]]:
        """Return every stored definition by name; unreadable rows are logged and left out."""
        found: dict[str, dict[str, Any]] = {}
        for name, text in sorted(self._read_definitions().items()):
            try:
                record = json.loads(text)
            except ValueError as exc:
                logger.error("schedule store entry %r is not valid JSON: %s", name, exc)
                continue
            if isinstance(record, dict):
                found[name] = record
        return found

    def add(self, entry: ScheduleEntry, *, app_tz: str | None = None) -> None:
        """Add or replace a store-defined entry; beat picks it up within seconds.

        Raises:
            ValueError: ``entry`` was defined by ``beat_schedule`` (change it there), or its
                arguments cannot be stored as JSON.
        """
        current = self.definitions().get(entry.name)
        if current is not None and current.get("origin") == "config":
            raise ValueError(
                f"schedule entry {entry.name!r} comes from beat_schedule or add_periodic_task; "
                "change it in the app's configuration (disable works on it, too)"
            )
        record = entry_to_record(entry, origin="store", app_tz=app_tz)
        try:
            text = json.dumps(record)
        except TypeError as exc:
            raise ValueError(f"schedule entry {entry.name!r} cannot be stored: {exc}") from exc
        self._write_definition(entry.name, text)

    def remove(self, name: str) -> bool:
        """Delete a store-defined entry and its run state; return whether it existed.

        Raises:
            ValueError: the entry comes from ``beat_schedule`` (it would come back at next start).
        """
        current = self.definitions().get(name)
        if current is not None and current.get("origin") == "config":
            raise ValueError(
                f"schedule entry {name!r} comes from beat_schedule or add_periodic_task; "
                "remove it from the configuration, or disable it"
            )
        return self._delete_definition(name)

    def set_enabled(self, name: str, enabled: bool) -> bool:
        """Enable or disable an entry of either origin; return whether it exists."""
        current = self.definitions().get(name)
        if current is None:
            return False
        self._write_definition(name, json.dumps({**current, "enabled": enabled}))
        return True

    def sync_config(self, entries: Iterable[ScheduleEntry], *, app_tz: str | None) -> list[str]:
        """Write the configured entries into the store; return errors for unstorable ones.

        Config wins for its names (their definition is overwritten) but the ``enabled`` flag is
        operational state and survives; config entries that left the configuration are deleted;
        store-defined entries are untouched.
        """
        stored, errors, names = self.definitions(), [], set()
        for entry in entries:
            names.add(entry.name)
            record = entry_to_record(entry, origin="config", app_tz=app_tz)
            record["enabled"] = bool(stored.get(entry.name, {}).get("enabled", True))
            try:
                text = json.dumps(record)
            except TypeError as exc:
                errors.append(f"beat_schedule entry {entry.name!r} cannot be stored: {exc}")
                continue
            if stored.get(entry.name) != record:
                self._write_definition(entry.name, text)
        for name, record in stored.items():
            if record.get("origin") == "config" and name not in names:
                self._delete_definition(name)
        return errors

    def load(
        self, app: Celery | None, config: Mapping[str, ScheduleEntry] | None = None
    ) -> tuple[list[ScheduleEntry], list[str]]:
        """Return the entries to schedule, with run state, and one error per broken row.

        Config-origin names use the object from ``config`` (custom schedule classes survive), with
        the store's ``enabled`` flag; a broken row does not stop the others.
        """
        config = config or {}
        runs, entries, errors = self._read_runs(), [], []
        stored = self.definitions()
        for name, record in stored.items():
            try:
                if record.get("origin") == "config" and name in config:
                    entry = replace(config[name], enabled=bool(record.get("enabled", True)))
                else:
                    entry = entry_from_record(name, record, app)
            except ValueError as exc:
                errors.append(str(exc))
                continue
            if name in runs:
                at_us, count = runs[name]
                entry = replace(entry, last_run_at=from_micros(at_us), total_run_count=count)
            entries.append(entry)
        entries += [e for name, e in config.items() if name not in stored]
        return entries, errors

    def describe(self, app: Celery, now: datetime) -> tuple[list[dict[str, Any]], list[str]]:
        """Return every entry as a JSON-able row (name, task, schedule, enabled, origin, last
        and next run, total runs), sorted by name, and one error per broken row.

        What ``chard beat schedule list`` prints and the dashboard shows: config entries
        (``beat_schedule``, ``add_periodic_task``) merged with the store's, as beat runs them.
        """
        app.finalize()
        configured, _ = entries_from_config(app.conf.beat_schedule or {}, app=app)
        entries, errors = self.load(app, {e.name: e for e in configured})
        origins = {
            name: record.get("origin", "store") for name, record in self.definitions().items()
        }
        rows = []
        for entry in sorted(entries, key=lambda e: e.name):
            last = entry.last_run_at
            upcoming = entry.next_run(now)
            rows.append(
                {
                    "name": entry.name,
                    "task": entry.task,
                    "schedule": repr(entry.schedule),
                    "enabled": entry.enabled,
                    "origin": origins.get(entry.name, "config"),
                    "last_run_at": last.isoformat() if last else None,
                    "total_run_count": entry.total_run_count,
                    "next_run_at": upcoming.isoformat() if upcoming else None,
                }
            )
        return rows, errors

    # -- run state, lease, firings --------------------------------------------
    def record_run(self, name: str, last_run_at: datetime, total_run_count: int) -> None:
        """Store that ``name`` last ran at ``last_run_at`` (monotonic: never moves back)."""
        self._write_run(name, to_micros(last_run_at), total_run_count)

    def acquire_lease(self, owner: str, timeout: float) -> bool:
        """Take or extend the leader lease for ``timeout`` seconds; True while ``owner`` leads."""
        return self._acquire_lease(owner, timeout)

    def lease_holder(self) -> LeaseHolder | None:
        """Return who leads now (for the start-up summary and logs), or None if nobody does."""
        held = self._read_lease()
        return LeaseHolder(held[0], max(0.0, held[1])) if held is not None else None

    def release_lease(self, owner: str) -> None:
        """Give the lease up so a standby takes over at once (no-op if ``owner`` lost it)."""
        self._release_lease(owner)

    def claim_firing(self, name: str, scheduled_at: datetime) -> bool:
        """Claim the run of ``name`` scheduled at ``scheduled_at``; only one caller ever wins."""
        return self._claim(slot_key(name, scheduled_at), FIRING_RETENTION)
