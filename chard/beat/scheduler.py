"""The pure core of beat: which entries are due at an instant, and how long beat may sleep.

Nothing here reads the clock or does I/O; :meth:`Scheduler.tick` takes ``now``, so the beat
service, the state stores and the tests all drive it with explicit instants.

Semantics follow Celery's beat:

- **First sight.** An entry with no ``last_run_at`` counts "now" (when the scheduler first sees
  it) as its last run, as Celery stamps an entry at creation: an interval entry first runs one
  interval after beat starts, a crontab at its next matching time.
- **Missed runs.** After downtime an entry is due if at least one run fell inside the gap, and it
  fires *once*: the run is stamped at ``now`` and the next one is computed from there. An interval
  that missed ten runs does not fire ten times, and a crontab whose time passed while beat was down
  fires once at start, then resumes its normal rhythm.
- **Disabled entries** are never due and do not shorten the sleep.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import MappingProxyType
from typing import Any

from chard._utils.clock import to_utc
from chard.schedules import BaseSchedule, SupportsTimezone, maybe_schedule, schedstate

__all__ = ["ScheduleEntry", "Scheduler", "entries_from_config", "entry_from_config"]

logger = logging.getLogger(__name__)

#: Longest sleep between ticks, as Celery's ``beat_max_loop_interval`` default: bounds how late
#: beat notices entries added or edited while it sleeps.
DEFAULT_MAX_INTERVAL = 300.0

_CONFIG_KEYS = frozenset({"task", "schedule", "args", "kwargs", "options", "relative"})


@dataclass(frozen=True)
class ScheduleEntry:
    """One periodic task: what to send, on which schedule, and when it last ran.

    Frozen so that a tick can never half-update an entry; :meth:`record_run` returns the next
    version. ``args``, ``kwargs`` and ``options`` are passed to ``send_task`` as given.
    """

    name: str
    task: str
    schedule: BaseSchedule
    args: tuple[Any, ...] = ()  # task arguments: any serializable values
    kwargs: Mapping[str, Any] = field(default_factory=dict)  # as args
    options: Mapping[str, Any] = field(default_factory=dict)  # apply_async options
    last_run_at: datetime | None = None
    total_run_count: int = 0
    enabled: bool = True

    def is_due(self, now: datetime) -> schedstate:
        """Ask the schedule whether a run is due at ``now``, and how long until asking again.

        A never-run entry measures from ``now`` (see the module docstring); a disabled entry is
        never due.
        """
        at = to_utc(now)
        if not self.enabled:
            return schedstate(False, float("inf"))
        return self.schedule.is_due(self.last_run_at or at, at)

    def next_run(self, now: datetime) -> datetime | None:
        """Return when the entry is next due, never before ``now``; ``None`` if disabled."""
        if not self.enabled:
            return None
        at = to_utc(now)
        return max(self.schedule.next_after(self.last_run_at or at), at)

    def record_run(self, now: datetime) -> ScheduleEntry:
        """Return this entry as it is after a run sent at ``now``."""
        return replace(self, last_run_at=to_utc(now), total_run_count=self.total_run_count + 1)


class Scheduler:
    """Hold the entries and decide, tick by tick, which to send.

    Not thread-safe: the beat service owns one and calls :meth:`tick` from its loop.

    Args:
        entries: The initial entries; a later entry replaces an earlier one of the same name.
        max_interval: The longest sleep :meth:`tick` returns, in seconds.
    """

    def __init__(
        self, entries: Iterable[ScheduleEntry] = (), *, max_interval: float = DEFAULT_MAX_INTERVAL
    ) -> None:
        self.max_interval = max_interval
        self._entries: dict[str, ScheduleEntry] = {}
        for entry in entries:
            self.add(entry)

    @property
    def entries(self) -> Mapping[str, ScheduleEntry]:
        """The current entries by name, read-only (each carries its latest ``last_run_at``)."""
        return MappingProxyType(self._entries)

    def add(self, entry: ScheduleEntry) -> None:
        """Add ``entry``, or replace the entry of the same name."""
        self._entries[entry.name] = entry

    def remove(self, name: str) -> None:
        """Drop the entry called ``name``; unknown names are ignored, since stores race edits."""
        self._entries.pop(name, None)

    def tick(self, now: datetime) -> tuple[list[ScheduleEntry], float]:
        """Return the entries due at ``now`` and the seconds until the next check.

        Due entries are recorded as run at ``now`` (``last_run_at`` and ``total_run_count``
        updated here and in the returned copies), so the caller must send each of them; an
        overdue entry is returned once however many runs it missed. The sleep is the shortest
        wait over enabled entries, capped at ``max_interval`` and never negative.
        """
        at = to_utc(now)
        due: list[ScheduleEntry] = []
        sleep = self.max_interval
        for name, entry in list(self._entries.items()):
            if not entry.enabled:
                continue
            current = entry if entry.last_run_at is not None else replace(entry, last_run_at=at)
            state = current.is_due(at)
            if state.is_due:
                current = current.record_run(at)
                due.append(current)
            self._entries[name] = current
            sleep = min(sleep, state.next)
        return due, max(sleep, 0.0)


def entry_from_config(
    name: str, item: Mapping[str, Any], *, app: SupportsTimezone | None = None
) -> ScheduleEntry:
    """Build an entry from one ``beat_schedule`` item, validating it.

    Args:
        name: The item's key in ``beat_schedule``.
        item: ``{"task": ..., "schedule": seconds | timedelta | schedule | crontab, "args": ...,
            "kwargs": ..., "options": ..., "relative": ...}``; values are user config, so ``Any``.
        app: Duck-typed app; a crontab without its own ``tz`` takes ``app.timezone``.

    Raises:
        ValueError: The item is not a mapping, has unknown keys, misses ``task`` or ``schedule``,
            or its schedule is of the wrong type or not positive. The message names the entry.
    """

    def bad(problem: str) -> ValueError:
        return ValueError(f"beat_schedule entry {name!r} {problem}")

    if not isinstance(item, Mapping):
        raise bad(f"is a {type(item).__name__}; expected a dict with 'task' and 'schedule'")
    unknown = sorted(set(item) - _CONFIG_KEYS)
    if unknown:
        raise bad(f"has unknown keys {unknown}; allowed keys are {sorted(_CONFIG_KEYS)}")
    task = item.get("task")
    if not isinstance(task, str) or not task:
        raise bad(f"has task {task!r}; set 'task' to a registered task name")
    if "schedule" not in item:
        raise bad("has no 'schedule'; use seconds, a timedelta, schedule(...) or crontab(...)")
    try:
        sched = maybe_schedule(item["schedule"], relative=bool(item.get("relative")), app=app)
    except (TypeError, ValueError) as exc:
        raise bad(f"has a bad schedule: {exc}") from exc
    args, kwargs, options = item.get("args", ()), item.get("kwargs", {}), item.get("options", {})
    if not isinstance(args, list | tuple):
        raise bad(f"has args {args!r}; use a list or a tuple")
    for key, value in (("kwargs", kwargs), ("options", options)):
        if not isinstance(value, Mapping):
            raise bad(f"has {key} {value!r}; use a dict")
    return ScheduleEntry(name, task, sched, tuple(args), dict(kwargs), dict(options))


def entries_from_config(
    mapping: Mapping[str, Mapping[str, Any]], *, app: SupportsTimezone | None = None
) -> tuple[list[ScheduleEntry], list[str]]:
    """Build entries from a whole ``beat_schedule``; a broken item does not stop the others.

    Returns:
        The entries that built, and one error message per item that did not (each naming its
        entry), for the caller to report.
    """
    entries: list[ScheduleEntry] = []
    errors: list[str] = []
    for name, item in mapping.items():
        try:
            entries.append(entry_from_config(name, item, app=app))
        except ValueError as exc:
            logger.debug("skipping beat_schedule entry %r: %s", name, exc)
            errors.append(str(exc))
    return entries, errors
