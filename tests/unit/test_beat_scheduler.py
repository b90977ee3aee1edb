"""chard.beat.scheduler: tick(now) with fixed datetimes, missed runs, and config loading."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from chard.beat import ScheduleEntry, Scheduler, entries_from_config, entry_from_config
from chard.beat.scheduler import DEFAULT_MAX_INTERVAL
from chard.schedules import crontab, schedule

T0 = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)


def secs(n: float) -> timedelta:
    return timedelta(seconds=n)


def names(entries: list[ScheduleEntry]) -> list[str]:
    return [e.name for e in entries]


def test_interval_first_runs_one_interval_after_first_sight() -> None:
    # Given a never-run 10 s entry (Celery stamps last_run_at at creation)
    sched = Scheduler([ScheduleEntry("ping", "proj.ping", schedule(10))])

    # When beat ticks at start and again just before and at the interval
    first = sched.tick(T0)
    early = sched.tick(T0 + secs(9))
    on_time = sched.tick(T0 + secs(10))

    # Then nothing runs at start, and it runs once at T0 + 10 s
    assert first == ([], 10.0)
    assert early == ([], 1.0)
    assert names(on_time[0]) == ["ping"]
    assert on_time[1] == 10.0
    assert sched.entries["ping"].last_run_at == T0 + secs(10)
    assert sched.entries["ping"].total_run_count == 1


def test_due_entries_are_returned_updated() -> None:
    entry = ScheduleEntry("e", "t", schedule(60), args=(1,), last_run_at=T0, total_run_count=4)
    sched = Scheduler([entry])

    due, sleep = sched.tick(T0 + secs(61))

    assert due == [entry.record_run(T0 + secs(61))]
    assert due[0].total_run_count == 5
    assert due[0].args == (1,)
    assert sleep == 60.0


def test_sleep_is_the_shortest_wait_over_entries() -> None:
    sched = Scheduler(
        [
            ScheduleEntry("slow", "t", schedule(100), last_run_at=T0),
            ScheduleEntry("fast", "t", schedule(30), last_run_at=T0),
            ScheduleEntry("cron", "t", crontab(minute=1), last_run_at=T0),
        ]
    )

    assert sched.tick(T0 + secs(5)) == ([], 25.0)
    assert sched.tick(T0 + secs(30)) == ([sched.entries["fast"]], 30.0)
    assert sched.tick(T0 + secs(59.5)) == ([], 0.5)
    assert names(sched.tick(T0 + secs(60))[0]) == ["fast", "cron"]


def test_sleep_is_capped_and_never_negative() -> None:
    assert Scheduler().tick(T0) == ([], DEFAULT_MAX_INTERVAL)
    daily = ScheduleEntry("d", "t", schedule(timedelta(days=1)), last_run_at=T0)
    assert Scheduler([daily], max_interval=5.0).tick(T0) == ([], 5.0)


def test_interval_that_missed_many_runs_fires_once() -> None:
    # Given an every-minute entry whose last run was an hour ago (beat was down)
    sched = Scheduler([ScheduleEntry("m", "t", schedule(60), last_run_at=T0)])
    restart = T0 + timedelta(hours=1, seconds=20)

    # When beat comes back and ticks twice in the same second
    due, sleep = sched.tick(restart)
    again = sched.tick(restart)

    # Then it fires once, not sixty times, and resumes a minute later
    assert names(due) == ["m"]
    assert sleep == 60.0
    assert again == ([], 60.0)
    assert names(sched.tick(restart + secs(60))[0]) == ["m"]


def test_crontab_passed_during_downtime_fires_once_then_resumes() -> None:
    # Given a 07:30 daily crontab last run three days ago
    last = datetime(2024, 1, 1, 7, 30, tzinfo=UTC)
    entry = ScheduleEntry("report", "t", crontab(30, 7), last_run_at=last)
    sched = Scheduler([entry], max_interval=float("inf"))
    restart = datetime(2024, 1, 4, 9, 0, tzinfo=UTC)

    # When beat restarts at 09:00
    due, sleep = sched.tick(restart)

    # Then it fires once now, and next at tomorrow's 07:30
    assert names(due) == ["report"]
    assert sleep == timedelta(hours=22, minutes=30).total_seconds()
    assert sched.tick(restart + secs(1)) == ([], sleep - 1)
    assert names(sched.tick(datetime(2024, 1, 5, 7, 30, tzinfo=UTC))[0]) == ["report"]


def test_never_run_crontab_waits_for_its_next_time() -> None:
    sched = Scheduler([ScheduleEntry("c", "t", crontab(minute=0))], max_interval=float("inf"))

    assert sched.tick(T0 + secs(1)) == ([], 3599.0)
    assert names(sched.tick(T0 + timedelta(hours=1))[0]) == ["c"]


def test_disabled_entries_never_run_nor_wake_beat() -> None:
    sched = Scheduler(
        [
            ScheduleEntry("off", "t", schedule(1), last_run_at=T0, enabled=False),
            ScheduleEntry("on", "t", schedule(50), last_run_at=T0),
        ]
    )

    due, sleep = sched.tick(T0 + timedelta(days=1))

    assert names(due) == ["on"]
    assert sleep == 50.0
    assert sched.entries["off"].last_run_at == T0
    assert not sched.entries["off"].is_due(T0 + timedelta(days=1)).is_due
    assert sched.entries["off"].next_run(T0) is None


def test_entry_next_run() -> None:
    entry = ScheduleEntry("e", "t", schedule(60), last_run_at=T0)

    assert entry.next_run(T0) == T0 + secs(60)
    assert entry.next_run(T0 + timedelta(hours=1)) == T0 + timedelta(hours=1)  # overdue: now
    assert ScheduleEntry("n", "t", schedule(60)).next_run(T0) == T0 + secs(60)


def test_add_replaces_and_remove_forgets() -> None:
    sched = Scheduler([ScheduleEntry("e", "t", schedule(60), last_run_at=T0)])
    sched.add(ScheduleEntry("e", "t", schedule(5), last_run_at=T0))
    sched.remove("e")
    sched.remove("never-there")

    assert dict(sched.entries) == {}


def test_entry_from_config_builds_every_schedule_type() -> None:
    app = SimpleNamespace(timezone=ZoneInfo("Europe/Berlin"))

    by_seconds = entry_from_config("a", {"task": "t.a", "schedule": 30.0, "args": [1, 2]})
    by_delta = entry_from_config("b", {"task": "t.b", "schedule": timedelta(hours=1),
                                       "relative": True, "kwargs": {"x": 1},
                                       "options": {"queue": "q"}})  # fmt: skip
    by_cron = entry_from_config("c", {"task": "t.c", "schedule": crontab(0, 9)}, app=app)

    assert by_seconds == ScheduleEntry("a", "t.a", schedule(30), args=(1, 2))
    assert by_delta.schedule == schedule(3600, relative=True)
    assert (by_delta.kwargs, by_delta.options) == ({"x": 1}, {"queue": "q"})
    assert by_cron.schedule.next_after(T0) == datetime(2024, 1, 2, 8, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("item", "problem"),
    [
        ({"schedule": 10}, "has task None"),
        ({"task": "", "schedule": 10}, "has task ''"),
        ({"task": "t"}, "has no 'schedule'"),
        ({"task": "t", "schedule": "every minute"}, "bad schedule"),
        ({"task": "t", "schedule": 0}, "not positive"),
        ({"task": "t", "schedule": -5}, "not positive"),
        ({"task": "t", "schedule": 10, "args": "1,2"}, "use a list or a tuple"),
        ({"task": "t", "schedule": 10, "kwargs": [1]}, "has kwargs [1]"),
        ({"task": "t", "schedule": 10, "kwarg": {}}, "unknown keys ['kwarg']"),
        ("t", "is a str"),
    ],
)
def test_entry_from_config_errors_name_the_entry(item: object, problem: str) -> None:
    with pytest.raises(ValueError, match="beat_schedule entry 'broken'") as info:
        entry_from_config("broken", item)  # type: ignore[arg-type]

    assert problem in str(info.value)


def test_broken_entries_are_reported_while_good_ones_load() -> None:
    config: dict[str, dict[str, Any]] = {
        "good-1": {"task": "t.one", "schedule": 10},
        "no-task": {"schedule": 10},
        "zero": {"task": "t.zero", "schedule": 0},
        "good-2": {"task": "t.two", "schedule": crontab(minute="*/5")},
    }

    entries, errors = entries_from_config(config)

    assert names(entries) == ["good-1", "good-2"]
    assert len(errors) == 2
    assert "'no-task'" in errors[0]
    assert "'zero'" in errors[1]
    assert "not positive" in errors[1]
