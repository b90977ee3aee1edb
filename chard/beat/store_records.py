"""Stored form of schedule entries: JSON-ready records and exact, comparable instants.

Kept apart from the store classes so that the CLI and tests can build and read records without
opening a store. Instants are integer microseconds since the epoch (not float seconds): firing
keys are computed from the stored last run, and every beat must read back exactly the instant the
previous leader held in memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from chard._utils.clock import to_utc
from chard.beat.scheduler import ScheduleEntry
from chard.schedules import BaseSchedule, crontab, schedule

if TYPE_CHECKING:
    from chard.app import Celery

__all__ = [
    "FIRING_RETENTION",
    "entry_from_record",
    "entry_to_record",
    "from_micros",
    "schedule_from_record",
    "schedule_to_record",
    "slot_key",
    "to_micros",
]

#: How long a firing key is kept: far longer than any lease overlap it guards against.
FIRING_RETENTION = 86400.0

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_CRON_FIELDS = {  # field -> the full range, which is written back as "*"
    "minute": frozenset(range(60)),
    "hour": frozenset(range(24)),
    "day_of_week": frozenset(range(7)),
    "day_of_month": frozenset(range(1, 32)),
    "month_of_year": frozenset(range(1, 13)),
}


def to_micros(dt: datetime) -> int:
    """Return ``dt`` as integer microseconds since the epoch (exact, unlike a float timestamp).

    Firing keys are computed from the stored last run, so every beat must read back exactly the
    instant the previous leader held in memory.
    """
    return (to_utc(dt) - _EPOCH) // _MICROSECOND


def from_micros(value: int) -> datetime:
    """Invert :func:`to_micros`."""
    return _EPOCH + timedelta(microseconds=int(value))


def slot_key(name: str, scheduled_at: datetime) -> str:
    """Return the idempotency key of one scheduled run: ``<entry name>:<ISO time in UTC>``."""
    return f"{name}:{to_utc(scheduled_at).isoformat()}"


def _cron_text(values: frozenset[int], full: frozenset[int]) -> str:
    return "*" if values == full else ",".join(str(v) for v in sorted(values))


def schedule_to_record(sched: BaseSchedule, app_tz: str | None = None) -> dict[str, Any]:
    """Describe a schedule as JSON-ready data; ``{"repr": ...}`` for types the store cannot rebuild.

    A crontab's zone is written only when it differs from ``app_tz``, so that an entry without
    its own ``tz`` keeps following the app's ``timezone`` setting.
    """
    if isinstance(sched, schedule):
        return {"every": sched.seconds, "relative": sched.relative}
    if isinstance(sched, crontab):
        fields = {f: _cron_text(getattr(sched, f), full) for f, full in _CRON_FIELDS.items()}
        zone = str(sched.tz)
        return {"crontab": fields, "tz": None if zone == (app_tz or "UTC") else zone}
    return {"repr": repr(sched)}


def schedule_from_record(data: Any, app: Celery | None) -> BaseSchedule:
    """Rebuild a schedule written by :func:`schedule_to_record`.

    Raises:
        ValueError: the data is malformed, or the schedule rejects it (zero interval, a cron
            field out of range); the message says which.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"schedule {data!r} is not an object")
    try:
        if "every" in data:
            return schedule(data["every"], relative=bool(data.get("relative")), app=app)
        if "crontab" in data and isinstance(data["crontab"], Mapping):
            fields = {k: v for k, v in data["crontab"].items() if k in _CRON_FIELDS}
            return crontab(**fields, tz=data.get("tz"), app=app)
    except TypeError as exc:
        raise ValueError(str(exc)) from exc
    if "repr" in data:
        raise ValueError(f"schedule {data['repr']} can only be defined in beat_schedule")
    raise ValueError(f"schedule {data!r} has neither 'every' nor 'crontab'")


def entry_to_record(entry: ScheduleEntry, *, origin: str, app_tz: str | None) -> dict[str, Any]:
    """Return the definition of ``entry`` as stored (run state is kept apart)."""
    return {
        "task": entry.task,
        "schedule": schedule_to_record(entry.schedule, app_tz),
        "args": list(entry.args),
        "kwargs": dict(entry.kwargs),
        "options": dict(entry.options),
        "enabled": entry.enabled,
        "origin": origin,
    }


def entry_from_record(name: str, record: Mapping[str, Any], app: Celery | None) -> ScheduleEntry:
    """Build an entry from a stored definition.

    Raises:
        ValueError: naming the entry and the problem (unknown schedule, bad cron field, ...).
    """

    def bad(problem: str) -> ValueError:
        return ValueError(f"schedule store entry {name!r} {problem}")

    task = record.get("task")
    if not isinstance(task, str) or not task:
        raise bad(f"has task {task!r}; give a task name")
    try:
        sched = schedule_from_record(record.get("schedule"), app)
    except ValueError as exc:
        raise bad(f"has a bad schedule: {exc}") from exc
    args = record.get("args", [])
    kwargs, options = record.get("kwargs", {}), record.get("options", {})
    if not isinstance(args, list | tuple):
        raise bad(f"has args {args!r}; use a list")
    if not isinstance(kwargs, Mapping) or not isinstance(options, Mapping):
        raise bad(f"has kwargs {kwargs!r} / options {options!r}; use objects")
    return ScheduleEntry(
        name, task, sched, tuple(args), dict(kwargs), dict(options),
        enabled=bool(record.get("enabled", True)),
    )  # fmt: skip
