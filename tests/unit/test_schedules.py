"""chard.schedules: Celery's crontab table, is_due semantics, DST rules and validation.

No test reads the real clock: "now" is always a fixed datetime passed in or returned by nowfun.
"""

from __future__ import annotations

import pickle
import random
import threading
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest

from chard import Celery
from chard.schedules import BaseSchedule, crontab, maybe_schedule, schedstate, schedule

#: A Monday; the first Sunday after it is 2024-01-07 and the first Thursday 2024-01-04.
START = datetime(2024, 1, 1, tzinfo=UTC)
NEW_YORK = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")


def at(text: str, tz: ZoneInfo | None = None) -> datetime:
    """Parse ``"2024-01-02 03:00"`` as UTC, or as wall time in ``tz`` (first occurrence)."""
    naive = datetime.fromisoformat(text)
    return naive.replace(tzinfo=tz).astimezone(UTC) if tz else naive.replace(tzinfo=UTC)


def fires(sched: BaseSchedule, start: datetime, count: int) -> list[datetime]:
    """Return the next ``count`` fire instants after ``start``."""
    out: list[datetime] = []
    for _ in range(count):
        start = sched.next_after(start)
        out.append(start)
    return out


def days(month: str, numbers: list[int]) -> list[datetime]:
    return [at(f"{month}-{n:02d} 00:00") for n in numbers]


def hours(day: str, numbers: list[int]) -> list[datetime]:
    return [at(f"{day} {n:02d}:00") for n in numbers]


EVERY_3H = [*hours("2024-01-01", [3, 6, 9, 12, 15, 18, 21]), at("2024-01-02 00:00")]

# Every example in the crontab table of Celery's periodic-tasks guide, with its next fire times.
CELERY_TABLE = [
    ("every minute", crontab(), [at(f"2024-01-01 00:0{m}") for m in (1, 2, 3)]),
    ("daily at midnight", crontab(minute=0, hour=0), days("2024-01", [2, 3, 4])),
    ("every three hours", crontab(minute=0, hour="*/3"), EVERY_3H),
    ("same, listed", crontab(minute=0, hour="0,3,6,9,12,15,18,21"), EVERY_3H),
    ("every 15 minutes", crontab(minute="*/15"),
     [*(at(f"2024-01-01 00:{m}") for m in (15, 30, 45)), at("2024-01-01 01:00")]),
    ("every minute on sundays", crontab(day_of_week="sunday"),
     [at(f"2024-01-07 00:0{m}") for m in (0, 1, 2)]),
    ("same, abbreviated", crontab(minute="*", hour="*", day_of_week="sun"),
     [at(f"2024-01-07 00:0{m}") for m in (0, 1, 2)]),
    ("every ten minutes at 3, 17, 22 on thu and fri",
     crontab(minute="*/10", hour="3,17,22", day_of_week="thu,fri"),
     [*(at(f"2024-01-04 03:{m}0") for m in range(6)), at("2024-01-04 17:00")]),
    ("even hours and hours divisible by three", crontab(minute=0, hour="*/2,*/3"),
     [*hours("2024-01-01", [2, 3, 4, 6, 8, 9, 10, 12, 14, 15, 16, 18, 20, 21, 22]),
      at("2024-01-02 00:00")]),
    ("hours divisible by five", crontab(minute=0, hour="*/5"),
     [*hours("2024-01-01", [5, 10, 15, 20]), at("2024-01-02 00:00")]),
    ("every third hour and office hours", crontab(minute=0, hour="*/3,8-17"),
     [*hours("2024-01-01", [3, 6, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 21]),
      at("2024-01-02 00:00")]),
    ("second day of every month", crontab(0, 0, day_of_month="2"),
     [at("2024-01-02 00:00"), at("2024-02-02 00:00"), at("2024-03-02 00:00")]),
    ("every even-numbered day", crontab(0, 0, day_of_month="2-30/2"),
     [*days("2024-01", list(range(2, 31, 2))), at("2024-02-02 00:00")]),
    ("first and third weeks", crontab(0, 0, day_of_month="1-7,15-21"),
     [*days("2024-01", [2, 3, 4, 5, 6, 7, *range(15, 22)]), at("2024-02-01 00:00")]),
    ("the eleventh of may", crontab(0, 0, day_of_month="11", month_of_year="5"),
     [at("2024-05-11 00:00"), at("2025-05-11 00:00"), at("2026-05-11 00:00")]),
    ("every day of the first month of each quarter", crontab(0, 0, month_of_year="*/3"),
     [*days("2024-01", list(range(2, 32))), at("2024-04-01 00:00"), at("2024-04-02 00:00")]),
]  # fmt: skip


@pytest.mark.parametrize(("sched", "expected"), [c[1:] for c in CELERY_TABLE],
                         ids=[c[0] for c in CELERY_TABLE])  # fmt: skip
def test_celery_table_next_fire_times(sched: crontab, expected: list[datetime]) -> None:
    assert fires(sched, START, len(expected)) == expected


@pytest.mark.parametrize(
    ("sched", "after", "expected"),
    [
        (crontab(day_of_week="sun"), at("2024-01-07 23:59"), at("2024-01-14 00:00")),
        (crontab("*/10", "3,17,22", "thu,fri"), at("2024-01-04 22:50"), at("2024-01-05 03:00")),
        (crontab("*/10", "3,17,22", "thu,fri"), at("2024-01-05 22:50"), at("2024-01-11 03:00")),
        (crontab(0, 0, day_of_month="2-30/2"), at("2024-02-28 00:00"), at("2024-03-02 00:00")),
        (crontab(0, 0, month_of_year="*/3"), at("2024-10-31 00:00"), at("2025-01-01 00:00")),
        (crontab(0, 0, day_of_month=29, month_of_year=2), START, at("2024-02-29 00:00")),
        (crontab(0, 0, day_of_month=29, month_of_year=2), at("2024-03-01"), at("2028-02-29")),
        # Celery combines day_of_month and day_of_week with AND: the next Friday the 13th.
        (crontab(0, 0, "fri", 13), START, at("2024-09-13 00:00")),
    ],
)
def test_rollover_and_and_semantics(sched: crontab, after: datetime, expected: datetime) -> None:
    assert sched.next_after(after) == expected


def test_next_after_is_strict_and_minute_aligned() -> None:
    sched = crontab(minute=30, hour=7)

    assert sched.next_after(at("2024-01-01 07:30")) == at("2024-01-02 07:30")
    assert sched.next_after(at("2024-01-01 07:29:59.5")) == at("2024-01-01 07:30")
    assert sched.next_after(datetime(2024, 1, 1, 7)) == at("2024-01-01 07:30")  # naive is UTC


@pytest.mark.parametrize(
    ("given", "same_as"),
    [
        (dict(day_of_week="mon-fri"), dict(day_of_week="1-5")),
        (dict(day_of_week="fri-mon"), dict(day_of_week={5, 6, 0, 1})),
        (dict(day_of_week="Saturday,SUN"), dict(day_of_week=[6, 0])),
        (dict(day_of_week=["Mon", "fri"]), dict(day_of_week="1,5")),
        (dict(hour="22-2"), dict(hour="22,23,0,1,2")),
        (dict(minute="*/15"), dict(minute=(0, 15, 30, 45))),
        (dict(minute="5/20"), dict(minute="5,25,45")),
        (dict(month_of_year="jan,apr-jun"), dict(month_of_year="1,4,5,6")),
        (dict(hour="0-23/2"), dict(hour="*/2")),
    ],
)
def test_syntax_forms_are_equivalent(given: dict[str, object], same_as: dict[str, object]) -> None:
    assert crontab(**given) == crontab(**same_as)  # type: ignore[arg-type]


def test_matches_croniter_with_and_semantics() -> None:
    croniter = pytest.importorskip("croniter").croniter
    rng = random.Random(2024)  # seeded: the same instants on every run
    lines = ["*/7 3-5 * * *", "0 0 1-7 * 1", "15 */6 13 * 5", "0 12 * 2 *", "5 4 29 2 *"]
    for line in lines:
        sched = crontab.from_string(line)
        for _ in range(50):
            after = START + timedelta(minutes=rng.randrange(60 * 24 * 366 * 4))
            expected = croniter(line, after, day_or=False).get_next(datetime)
            assert sched.next_after(after) == expected, (line, after)


class TestIsDue:
    def test_crontab_not_due_reports_seconds_left(self) -> None:
        sched = crontab(minute=30, hour=7, nowfun=lambda: at("2024-01-02 07:29:30"))

        assert sched.is_due(at("2024-01-01 07:30")) == schedstate(False, 30.0)
        assert sched.remaining_estimate(at("2024-01-01 07:30")) == timedelta(seconds=30)

    def test_crontab_due_reports_time_to_following_run(self) -> None:
        sched = crontab(minute=30, hour=7, nowfun=lambda: at("2024-01-02 07:30"))

        assert sched.is_due(at("2024-01-01 07:30")) == schedstate(True, 86400.0)

    def test_crontab_passed_during_downtime_is_due_once_then_resumes(self) -> None:
        # Given a daily crontab last run a week ago, checked mid-afternoon
        sched = crontab(minute=30, hour=7)
        now = at("2024-01-08 15:00")

        # Then it is due now, and the next check is tomorrow's 07:30
        assert sched.is_due(at("2024-01-01 07:30"), now) == schedstate(True, 16.5 * 3600)
        assert sched.is_due(now, now) == schedstate(False, 16.5 * 3600)

    def test_interval(self) -> None:
        sched = schedule(10, nowfun=lambda: at("2024-01-01 00:00:13"))

        assert sched.is_due(at("2024-01-01 00:00:03")) == schedstate(True, 10.0)
        assert sched.is_due(at("2024-01-01 00:00:06")) == schedstate(False, 3.0)
        assert sched.remaining_estimate(at("2024-01-01 00:00:10")) == timedelta(seconds=7)
        # Many missed intervals still make one run, with the next check one interval away.
        assert sched.is_due(at("2023-12-31 00:00")) == schedstate(True, 10.0)

    def test_explicit_now_beats_nowfun(self) -> None:
        sched = schedule(timedelta(minutes=1), nowfun=lambda: at("2030-01-01 00:00"))

        assert sched.is_due(START, START + timedelta(seconds=20)) == schedstate(False, 40.0)

    def test_nowfun_naive_is_utc(self) -> None:
        assert schedule(60, nowfun=lambda: datetime(2024, 1, 1, 0, 1)).is_due(START).is_due

    def test_relative_rounds_down_to_the_interval_unit(self) -> None:
        assert schedule(3600, relative=True).next_after(at("2024-01-01 12:34:56")) == at(
            "2024-01-01 13:00"
        )
        assert schedule(86400, relative=True).next_after(at("2024-01-01 12:34")) == at("2024-01-02")
        assert schedule(90, relative=True).next_after(at("2024-01-01 12:00:45")) == at(
            "2024-01-01 12:02"
        )


class TestTimezones:
    def test_crontab_fires_at_wall_clock_of_its_zone(self) -> None:
        sched = crontab(minute=30, hour=7, tz="Europe/Berlin")

        assert sched.next_after(START) == at("2024-01-01 06:30")  # CET, UTC+1
        assert sched.next_after(at("2024-07-01")) == at("2024-07-01 05:30")  # CEST, UTC+2

    def test_app_timezone_is_used_unless_tz_given(self) -> None:
        app = SimpleNamespace(timezone=NEW_YORK)

        assert crontab(0, 9, app=app).next_after(START) == at("2024-01-01 09:00", NEW_YORK)
        assert crontab(0, 9, app=app, tz=BERLIN).next_after(START) == at("2024-01-01 08:00")

    @pytest.mark.parametrize(
        ("tz", "day", "next_day"), [(NEW_YORK, "2024-03-10", "2024-03-11"),
                                    (BERLIN, "2024-03-31", "2024-04-01")],
    )  # fmt: skip
    def test_spring_forward_gap_fires_once_at_end_of_gap(
        self, tz: ZoneInfo, day: str, next_day: str
    ) -> None:
        sched = crontab(minute=30, hour=2, tz=tz)

        got = fires(sched, at(f"{day} 00:00", tz), 2)

        # 02:30 does not exist that day: the run happens once, at 03:00, the first instant
        # after the gap; the next day is back to 02:30.
        assert got == [at(f"{day} 03:00", tz), at(f"{next_day} 02:30", tz)]
        assert got[0] - at(f"{day} 01:59", tz) == timedelta(minutes=1)

    def test_frequent_crontab_collapses_the_gap_into_one_run(self) -> None:
        sched = crontab(minute="*/15", tz=BERLIN)

        got = fires(sched, at("2024-03-31 01:40", BERLIN), 4)

        assert [g.astimezone(BERLIN).strftime("%H:%M") for g in got] == [
            "01:45",
            "03:00",
            "03:15",
            "03:30",
        ]

    def test_fall_back_repeated_time_fires_once(self) -> None:
        for tz, day, hour in ((NEW_YORK, "2024-11-03", 1), (BERLIN, "2024-10-27", 2)):
            sched = crontab(minute=30, hour=hour, tz=tz)
            first = at(f"{day} {hour:02d}:30", tz)

            assert sched.next_after(first - timedelta(hours=1)) == first
            assert sched.next_after(first) - first == timedelta(hours=25)  # a 25-hour day
            # Checked during the second occurrence, the run stamped at the first is not due.
            assert not sched.is_due(first, first + timedelta(hours=1)).is_due

    def test_fall_back_hourly_runs_each_wall_hour_once(self) -> None:
        sched = crontab(minute=0, tz=NEW_YORK)

        got = fires(sched, at("2024-11-03 04:30"), 3)

        # 01:00 EDT (05:00 UTC) runs; 01:00 EST (06:00 UTC) is the same wall time and does not.
        assert got == [at("2024-11-03 05:00"), at("2024-11-03 07:00"), at("2024-11-03 08:00")]


@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [
        (dict(minute="61"), ["minute", "'61'", "0-59"]),
        (dict(minute=61), ["minute", "61", "0-59"]),
        (dict(hour="24"), ["hour", "'24'", "0-23"]),
        (dict(day_of_week="funday"), ["day_of_week", "'funday'", "0-6", "sun-sat"]),
        (dict(day_of_week=8), ["day_of_week", "8", "0-6"]),
        (dict(day_of_month="0"), ["day_of_month", "'0'", "1-31"]),
        (dict(month_of_year="13"), ["month_of_year", "'13'", "1-12"]),
        (dict(minute="*/0"), ["minute", "'*/0'", "step"]),
        (dict(minute="1-"), ["minute", "'1-'", "cannot parse"]),
        (dict(minute=""), ["minute", "''", "cannot parse"]),
        (dict(minute=[]), ["minute", "[]", "no values"]),
        (dict(minute=1.5), ["minute", "1.5", "float"]),
        (dict(minute=[1.5]), ["minute", "1.5", "not an int"]),
        (dict(day_of_week=7), ["day_of_week", "7", "0-6 (Sunday is 0)"]),  # Celery refuses 7
        (dict(day_of_week="sat-7"), ["day_of_week", "'sat-7'", "0-6"]),
    ],
)
def test_crontab_validation(kwargs: dict[str, object], fragments: list[str]) -> None:
    with pytest.raises(ValueError, match="crontab") as info:
        crontab(**kwargs)  # type: ignore[arg-type]

    for fragment in fragments:
        assert fragment in str(info.value)


def test_unknown_time_zone_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="time zone 'Mars/Olympus' is unknown"):
        crontab(tz="Mars/Olympus")


@pytest.mark.parametrize("run_every", [0, -1, 0.0, timedelta(0), timedelta(seconds=-5)])
def test_schedule_rejects_non_positive(run_every: float | timedelta) -> None:
    with pytest.raises(ValueError, match=r"run_every .* is not positive; allowed values are"):
        schedule(run_every)


def test_schedule_rejects_other_types() -> None:
    with pytest.raises(TypeError, match="'10'"):
        schedule("10")  # type: ignore[arg-type]


def test_reprs() -> None:
    assert repr(crontab(30, 7, day_of_month=1)) == "<crontab: 30 7 1 * * (m/h/dM/MY/d)>"
    assert repr(crontab(day_of_week={2, 1})) == "<crontab: * * * * 1,2 (m/h/dM/MY/d)>"
    assert repr(schedule(10)) == "<freq: 10.00 seconds>"
    assert repr(schedule(timedelta(hours=1))) == "<freq: 1.00 hour>"
    assert repr(schedule(90)) == "<freq: 1.50 minutes>"


def test_equality_and_hash() -> None:
    assert schedule(10) == schedule(timedelta(seconds=10))
    assert schedule(10) != schedule(10, relative=True)
    assert crontab(0, 0, tz="UTC") != crontab(0, 0, tz=BERLIN)
    assert crontab(0, 0) != schedule(60)
    assert len({crontab(minute="*/30"), crontab(minute=[0, 30]), schedule(5), schedule(5.0)}) == 2


def test_from_string_orders_fields_like_cron() -> None:
    assert crontab.from_string("30 7 1 * mon") == crontab(30, 7, "mon", 1)
    with pytest.raises(ValueError, match="5 fields"):
        crontab.from_string("30 7 *")


def test_maybe_schedule() -> None:
    app = SimpleNamespace(timezone=BERLIN)
    cron = crontab(0, 9)

    assert maybe_schedule(10) == schedule(10)
    assert maybe_schedule(timedelta(minutes=1), relative=True) == schedule(60, relative=True)
    assert maybe_schedule(cron, app=app) is cron
    assert cron.tz is BERLIN  # a crontab from config follows the app's zone, as in Celery
    with pytest.raises(TypeError, match="str"):
        maybe_schedule("10")  # type: ignore[arg-type]


def test_a_day_that_never_occurs_warns_and_never_fires() -> None:
    # Issue 14: legal in Celery ("31 April" simply never fires), so a warning, not an error
    with pytest.warns(UserWarning, match=r"day_of_month 31 never occurs .* will never run"):
        never = crontab(minute=0, hour=0, day_of_month=31, month_of_year="feb,apr")

    assert not never.is_due(at("2024-01-01 00:00"), now=at("2030-01-01 00:00")).is_due
    assert never.remaining_estimate(at("2024-01-01"), now=at("2024-01-02")) > timedelta(days=3650)


def test_remaining_delta_is_celerys_triple() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    sched = crontab(minute=30, hour=7, tz=berlin, nowfun=lambda: at("2024-01-01 05:00"))

    last, delta, now = sched.remaining_delta(at("2024-01-01 06:00"))

    assert last == at("2024-01-01 06:00")
    assert last.tzinfo == berlin
    assert last + delta == at("2024-01-01 06:30")  # 07:30 in Berlin
    assert now == at("2024-01-01 05:00")
    assert now.tzinfo == berlin


def test_schedules_pickle_without_their_app_or_nowfun() -> None:
    # Given a crontab bound to an app-like object and a lambda (neither pickles)
    class App:
        timezone = "Asia/Tokyo"
        lock = threading.Lock()

    sched = crontab(minute="*/15", hour="9-17", day_of_week="mon-fri", tz="Europe/Berlin")
    sched.app, sched.nowfun = App(), lambda: at("2024-01-01")

    # When it is pickled and loaded, it is the same schedule
    loaded = pickle.loads(pickle.dumps(sched))
    assert loaded == sched
    assert loaded.tz == ZoneInfo("Europe/Berlin")
    assert pickle.loads(pickle.dumps(schedule(30))) == schedule(30)


def test_beat_cron_starting_deadline_skips_a_run_missed_by_more_than_it() -> None:
    # Given an app with Celery's beat_cron_starting_deadline, and an hourly crontab from config
    app = Celery("deadline", broker="memory://", set_as_current=False)
    app.conf.beat_cron_starting_deadline = 120
    sched = maybe_schedule(crontab(minute=0), app=app)
    last = at("2024-01-01 09:00")

    # Then the 10:00 run still starts at 10:01, but not at 10:05: it waits for 11:00
    assert sched.is_due(last, now=at("2024-01-01 10:01")).is_due
    assert sched.is_due(last, now=at("2024-01-01 10:05")) == schedstate(False, 55 * 60)
    assert sched.is_due(last, now=at("2024-01-01 11:00:30")).is_due

    # And without the setting a missed run starts however late (the default)
    app.conf.beat_cron_starting_deadline = None
    assert sched.is_due(last, now=at("2024-01-01 10:05")).is_due
