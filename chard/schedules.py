"""Periodic schedules: when a beat entry should run next, as pure functions of time.

Mirrors ``celery.schedules``: :class:`schedule` (a fixed interval), :class:`crontab` (wall-clock
fields in Celery's syntax) and :class:`schedstate`. Every method that needs "now" takes it as an
optional argument, so beat and tests never read the real clock; ``nowfun`` covers the Celery-style
call ``is_due(last_run_at)``.

Crontab fields combine with AND, as in Celery (unlike cron, a restricted ``day_of_month`` *and*
``day_of_week`` must both match). Fire times follow the wall clock of the crontab's zone; around
daylight-saving changes:

- spring forward: wall times in the skipped gap (02:30 on the day clocks jump 02:00 -> 03:00) fire
  once, at the first instant after the gap (03:00), so a daily job is never lost;
- fall back: each wall time fires once, at its first occurrence, so a 01:30 daily job does not run
  twice, and an hourly job does not run again when 01:00 comes round the second time.

Cron arithmetic is a short search over the parsed field sets rather than ``croniter``: Celery's
syntax has to be parsed into sets anyway, and the core keeps ``click`` as its only dependency.
"""

from __future__ import annotations

import re
import warnings
from abc import ABC, abstractmethod
from calendar import monthrange
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import NamedTuple, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from chard._utils.clock import to_utc, utcnow

__all__ = ["BaseSchedule", "crontab", "maybe_schedule", "schedstate", "schedule"]

NowFun = Callable[[], datetime]
CronSpec = int | str | Iterable[int | str]

_MINUTE = timedelta(minutes=1)
#: When a crontab that can never match ("31 April") runs next.
NEVER = datetime.max.replace(tzinfo=UTC)
_UNITS = ((86400, "day"), (3600, "hour"), (60, "minute"), (1, "second"))
_DAYS = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")
_MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august",
           "september", "october", "november", "december")  # fmt: skip
_DAY_NAMES = {n: i for i, full in enumerate(_DAYS) for n in (full, full[:3])}
_MONTH_NAMES = {n: i for i, full in enumerate(_MONTHS, 1) for n in (full, full[:3])}
_PART = re.compile(r"(\*|[a-z0-9]+(?:-[a-z0-9]+)?)(?:/(\d+))?")


class SupportsTimezone(Protocol):
    """What a schedule reads from ``app=``: only its zone (duck-typed, so no import of the app)."""

    @property
    def timezone(self) -> tzinfo | str | None: ...


class schedstate(NamedTuple):
    """The answer to "should it run now?", plus how long beat may sleep before asking again."""

    is_due: bool
    next: float


def _resolve_tz(tz: tzinfo | str | None, app: SupportsTimezone | None) -> tzinfo:
    zone = tz if tz is not None else getattr(app, "timezone", None)
    if not isinstance(zone, str):
        return zone or UTC
    try:
        return ZoneInfo(zone)
    except (ValueError, ZoneInfoNotFoundError):
        raise ValueError(
            f"time zone {zone!r} is unknown; use an IANA name like 'Europe/Berlin'"
        ) from None


class BaseSchedule(ABC):
    """Behaviour shared by every schedule: "now" handling and the is_due contract."""

    def __init__(self, nowfun: NowFun | None = None, app: SupportsTimezone | None = None) -> None:
        self.nowfun = nowfun
        self.app = app

    def now(self) -> datetime:
        """Return the current instant as aware UTC, from ``nowfun`` when one was given."""
        return to_utc(self.nowfun()) if self.nowfun is not None else utcnow()

    @abstractmethod
    def next_after(self, dt: datetime) -> datetime:
        """Return the first fire instant strictly after ``dt`` (aware UTC; naive means UTC)."""

    @abstractmethod
    def is_due(self, last_run_at: datetime, now: datetime | None = None) -> schedstate:
        """Tell whether a run is due given the last run, and the seconds until beat checks again."""

    def remaining_estimate(self, last_run_at: datetime, now: datetime | None = None) -> timedelta:
        """Return the time from ``now`` to the next run after ``last_run_at`` (negative if late)."""
        return self.next_after(last_run_at) - (to_utc(now) if now is not None else self.now())

    @abstractmethod
    def _key(self) -> tuple[object, ...]:
        """What makes two schedules equal: beat compares them to notice edited entries."""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BaseSchedule):
            return NotImplemented
        return type(self) is type(other) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


class schedule(BaseSchedule):
    """Run every ``run_every`` (seconds or a timedelta).

    Args:
        run_every: The interval; must be positive.
        relative: Round each due time down to the interval's unit (day, hour or minute), as
            Celery does, so that ``run_every=3600`` runs on the hour.
        nowfun: Returns "now"; for tests and for Celery-style ``is_due(last_run_at)`` calls.
        app: Duck-typed app; its ``timezone`` decides where ``relative`` rounds to midnight.

    Raises:
        ValueError: ``run_every`` is zero or negative.
        TypeError: ``run_every`` is neither a number nor a timedelta.
    """

    def __init__(
        self,
        run_every: float | timedelta,
        relative: bool = False,
        nowfun: NowFun | None = None,
        app: SupportsTimezone | None = None,
    ) -> None:
        super().__init__(nowfun, app)
        if isinstance(run_every, timedelta):
            delta = run_every
        elif isinstance(run_every, int | float) and not isinstance(run_every, bool):
            delta = timedelta(seconds=run_every)
        else:
            raise TypeError(f"schedule run_every {run_every!r} is not a number or a timedelta")
        if delta <= timedelta(0):
            raise ValueError(
                f"schedule run_every {run_every!r} is not positive; "
                "allowed values are seconds > 0 or a timedelta > 0"
            )
        self.run_every = delta
        self.relative = relative

    @property
    def seconds(self) -> float:
        """The interval in seconds."""
        return self.run_every.total_seconds()

    @property
    def human_seconds(self) -> str:
        """The interval for people, as Celery prints it (``"10.00 seconds"``)."""
        size, unit = next(u for u in _UNITS if self.seconds >= u[0] or u[0] == 1)
        value = self.seconds / size
        return f"{value:.2f} {unit}{'' if value == 1 else 's'}"

    def next_after(self, dt: datetime) -> datetime:
        """Return ``dt + run_every``, rounded down to the interval's unit when ``relative``."""
        end = to_utc(dt) + self.run_every
        if not self.relative:
            return end
        local = end.astimezone(_resolve_tz(None, self.app)).replace(second=0, microsecond=0)
        if self.seconds >= 3600:
            local = local.replace(minute=0)
        if self.seconds >= 86400:
            local = local.replace(hour=0)
        return local.astimezone(UTC)

    def is_due(self, last_run_at: datetime, now: datetime | None = None) -> schedstate:
        """Return due with ``next=run_every`` once the interval has passed, else the time left.

        However many intervals have passed, the answer is one run: beat stamps the run at "now",
        so a schedule that missed runs during downtime fires once and not as a burst.
        """
        remaining = self.remaining_estimate(last_run_at, now).total_seconds()
        if remaining <= 0:
            return schedstate(True, self.seconds)
        return schedstate(False, remaining)

    def __repr__(self) -> str:
        return f"<freq: {self.human_seconds}>"

    def _key(self) -> tuple[object, ...]:
        return (self.run_every, self.relative)


class _Field(NamedTuple):
    """One cron field's range and names, and the parser for Celery's syntax of it."""

    name: str
    low: int
    high: int  # what "*" spans
    names: Mapping[str, int]
    allowed: str

    def error(self, spec: object, problem: str) -> ValueError:
        return ValueError(
            f"crontab {self.name} {spec!r} is invalid: {problem}; allowed values are "
            f"{self.allowed}, '*', '*/n', 'a-b', 'a-b/n' or a comma-separated list of those"
        )

    def number(self, spec: object, token: object) -> int:
        value = self.names.get(token.lower()) if isinstance(token, str) else None
        if value is None:
            if isinstance(token, bool) or not isinstance(token, int | str):
                raise self.error(spec, f"{token!r} is not an int or a str")
            try:
                value = int(token)
            except ValueError:
                raise self.error(spec, f"{token!r} is not a number or a name") from None
        if not self.low <= value <= self.high:
            raise self.error(spec, f"{value} is out of range {self.low}-{self.high}")
        return value

    def part(self, spec: str, text: str) -> list[int]:
        match = _PART.fullmatch(text.strip())
        if match is None:
            raise self.error(spec, f"cannot parse {text!r}")
        base, step = match.groups()
        if base == "*":
            span = list(range(self.low, self.high + 1))
        elif "-" in base:
            first, last = (self.number(spec, t) for t in base.split("-"))
            if last < first:  # "fri-mon" and "22-2" wrap round, as in Celery
                span = [*range(first, self.high + 1), *range(self.low, last + 1)]
            else:
                span = list(range(first, last + 1))
        else:
            start = self.number(spec, base)
            span = [start] if step is None else list(range(start, self.high + 1))
        if step is not None and int(step) < 1:
            raise self.error(spec, "a step must be at least 1")
        return span[:: int(step or 1)]

    def parse(self, spec: CronSpec) -> frozenset[int]:
        """Expand ``*``, ``*/n``, ``a-b/n``, names, lists, an int or ints to a set of values."""
        if isinstance(spec, str):
            values = [v for text in spec.lower().split(",") for v in self.part(spec, text)]
        elif isinstance(spec, int) and not isinstance(spec, bool):
            values = [self.number(spec, spec)]
        elif isinstance(spec, Iterable):
            values = [self.number(spec, v) for v in spec]
        else:
            raise self.error(spec, f"{type(spec).__name__} is not an int, a str or ints")
        if not values:
            raise self.error(spec, "no values")
        return frozenset(values)


_FIELDS = {
    "minute": _Field("minute", 0, 59, {}, "0-59"),
    "hour": _Field("hour", 0, 23, {}, "0-23"),
    # Celery refuses 7 for Sunday (its range is 0-6), so chard does too: a crontab that
    # beat accepts must load in a Celery beat of the same fleet.
    "day_of_week": _Field("day_of_week", 0, 6, _DAY_NAMES, "0-6 (Sunday is 0), sun-sat"),
    "day_of_month": _Field("day_of_month", 1, 31, {}, "1-31"),
    "month_of_year": _Field("month_of_year", 1, 12, _MONTH_NAMES, "1-12, jan-dec"),
}


def _spec_text(spec: CronSpec) -> str:
    if isinstance(spec, str | int):
        return str(spec)
    return ",".join(str(v) for v in sorted(spec))


class crontab(BaseSchedule):
    """Run at the wall-clock times matching every field, like a cron line, in the zone ``tz``.

    Args:
        minute, hour, day_of_week, day_of_month, month_of_year: Celery cron fields: an int, a
            str (``"*"``, ``"*/15"``, ``"1-5"``, ``"0-23/2"``, ``"mon-fri"``, ``"1,3,5"``) or an
            iterable of ints. ``day_of_week`` counts from Sunday = 0 (7 is refused, as in Celery).
        nowfun: Returns "now"; for tests and for Celery-style ``is_due(last_run_at)`` calls.
        app: Duck-typed app whose ``timezone`` is used when ``tz`` is not given.
        tz: The zone whose wall clock the fields describe: a ZoneInfo or a zone name. UTC when
            neither ``tz`` nor ``app.timezone`` is set.

    Raises:
        ValueError: A field is out of range or unparsable (the message names the field, the value
            and the allowed range). Day and month fields that never match together ("31 April")
            only warn, as Celery accepts them: such a crontab never runs.
    """

    def __init__(
        self,
        minute: CronSpec = "*",
        hour: CronSpec = "*",
        day_of_week: CronSpec = "*",
        day_of_month: CronSpec = "*",
        month_of_year: CronSpec = "*",
        nowfun: NowFun | None = None,
        app: SupportsTimezone | None = None,
        tz: tzinfo | str | None = None,
    ) -> None:
        super().__init__(nowfun, app)
        self._orig = (minute, hour, day_of_month, month_of_year, day_of_week)
        self.minute = _FIELDS["minute"].parse(minute)
        self.hour = _FIELDS["hour"].parse(hour)
        self.day_of_week = _FIELDS["day_of_week"].parse(day_of_week)
        self.day_of_month = _FIELDS["day_of_month"].parse(day_of_month)
        self.month_of_year = _FIELDS["month_of_year"].parse(month_of_year)
        self._tz = _resolve_tz(tz, None) if tz is not None else None
        # "31 April" is legal in Celery and simply never fires: warn (2000 is a leap year), and
        # answer "never" at run time instead of searching forever.
        self.is_never = not any(
            d <= monthrange(2000, m)[1] for m in self.month_of_year for d in self.day_of_month
        )
        if self.is_never:
            warnings.warn(
                f"crontab day_of_month {day_of_month!r} never occurs in month_of_year "
                f"{month_of_year!r}, so it will never run; choose days that exist in at least "
                "one of those months",
                UserWarning,
                stacklevel=2,
            )
        self._times = [time(h, m) for h in sorted(self.hour) for m in sorted(self.minute)]

    @classmethod
    def from_string(
        cls, line: str, nowfun: NowFun | None = None, tz: tzinfo | str | None = None
    ) -> crontab:
        """Build from a cron line ``"minute hour day_of_month month_of_year day_of_week"``."""
        fields = line.split()
        if len(fields) != 5:
            raise ValueError(f"cron line {line!r} must have 5 fields; got {len(fields)}")
        m, h, dom, moy, dow = fields
        return cls(m, h, dow, dom, moy, nowfun=nowfun, tz=tz)

    @property
    def tz(self) -> tzinfo:
        """The zone whose wall clock the fields describe."""
        return _resolve_tz(self._tz, self.app)

    def next_after(self, dt: datetime) -> datetime:
        """Return the first fire instant strictly after ``dt``, as aware UTC.

        Walks the matching wall-clock minutes of :attr:`tz` and maps each to an instant (see the
        module docstring for the daylight-saving rules); candidates that map to ``dt`` or earlier
        (a repeated hour, or a collapsed gap that already fired) are skipped.
        """
        after, zone = to_utc(dt), self.tz
        if self.is_never:
            return NEVER
        wall = after.astimezone(zone).replace(tzinfo=None, second=0, microsecond=0) + _MINUTE
        while True:  # ends: skips are bounded by the length of one DST transition
            wall = self._next_wall(wall)
            instant = _wall_to_utc(wall, zone)
            if instant > after:
                return instant
            wall += _MINUTE

    def _next_wall(self, start: datetime) -> datetime:
        """Return the first matching naive wall time at or after ``start``."""
        day, floor = start.date(), start.time()
        while True:  # ends: __init__ checked that some day of the year matches
            if day.month not in self.month_of_year:
                day = date(day.year + day.month // 12, day.month % 12 + 1, 1)
                continue
            if day.day in self.day_of_month and day.isoweekday() % 7 in self.day_of_week:
                lower = floor if day == start.date() else time(0)
                for at in self._times:
                    if at >= lower:
                        return datetime.combine(day, at)
            day += timedelta(days=1)

    def is_due(self, last_run_at: datetime, now: datetime | None = None) -> schedstate:
        """Return due when a fire time has passed since ``last_run_at``; ``next`` counts from now.

        A ``last_run_at`` far in the past (beat was down) makes the crontab due once; after that
        run is stamped at "now", the next fire time is computed from now, so missed times are not
        replayed. With ``beat_cron_starting_deadline`` set, a missed time older than that many
        seconds is skipped instead (Celery's rule): it is due only if a fire time lies within
        the deadline before ``now``.
        """
        at = to_utc(now) if now is not None else self.now()
        remaining = (self.next_after(last_run_at) - at).total_seconds()
        if remaining > 0:
            return schedstate(False, remaining)
        following = (self.next_after(at) - at).total_seconds()
        deadline = self.starting_deadline
        if (
            deadline is not None
            and self.next_after(at - timedelta(seconds=deadline, microseconds=1)) > at
        ):
            return schedstate(False, following)  # the last missed run is too old: skip it
        return schedstate(True, following)

    @property
    def starting_deadline(self) -> float | None:
        """How late (seconds) a missed run may still start: ``beat_cron_starting_deadline``.

        Celery's setting, read from the app's configuration; None (the default) runs a
        missed time however late beat notices it.
        """
        value = getattr(getattr(self.app, "conf", None), "beat_cron_starting_deadline", None)
        return float(value) if value is not None else None

    def remaining_delta(
        self, last_run_at: datetime, tz: tzinfo | str | None = None, ffwd: object = None
    ) -> tuple[datetime, timedelta, datetime]:
        """Return Celery's ``(last_run_at, delta, now)``: the next run is ``last_run_at + delta``.

        Both instants are in ``tz`` (default: the crontab's zone); ``ffwd`` is accepted
        for Celery's signature and unused.
        """
        zone = _resolve_tz(tz, None) if tz is not None else self.tz
        last = to_utc(last_run_at)
        return last.astimezone(zone), self.next_after(last) - last, self.now().astimezone(zone)

    def __reduce__(self) -> tuple[object, ...]:
        # Rebuilt from the fields as given, as Celery's; nowfun and app are not kept
        # (a lambda and an app do not pickle), the zone is.
        minute, hour, day_of_month, month_of_year, day_of_week = self._orig
        return (type(self), (minute, hour, day_of_week, day_of_month, month_of_year), self._tz)

    def __setstate__(self, state: tzinfo | None) -> None:
        self._tz = state

    def __repr__(self) -> str:
        fields = " ".join(_spec_text(s) for s in self._orig)
        return f"<crontab: {fields} (m/h/dM/MY/d)>"

    def _key(self) -> tuple[object, ...]:
        sets = (self.minute, self.hour, self.day_of_week, self.day_of_month, self.month_of_year)
        return (*sets, str(self.tz))


def _wall_to_utc(wall: datetime, zone: tzinfo) -> datetime:
    """Map a naive wall time to its instant: first occurrence if repeated, gap end if skipped."""
    instant = wall.replace(tzinfo=zone).astimezone(UTC)  # fold=0: the first occurrence
    if instant.astimezone(zone).replace(tzinfo=None) == wall:
        return instant
    # A skipped wall time: per PEP 495, fold=1 lands before the gap and fold=0 after it, so
    # bisect between the two for the transition, which is the first instant after the gap.
    lo = int(wall.replace(tzinfo=zone, fold=1).astimezone(UTC).timestamp())
    hi = int(instant.timestamp())
    after_gap = instant.astimezone(zone).utcoffset()
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, zone).utcoffset() == after_gap:
            hi = mid
        else:
            lo = mid
    return datetime.fromtimestamp(hi, UTC)


def maybe_schedule(
    value: float | timedelta | BaseSchedule,
    relative: bool = False,
    app: SupportsTimezone | None = None,
) -> BaseSchedule:
    """Turn a ``beat_schedule`` value into a schedule: seconds or a timedelta become intervals.

    A schedule passes through; when it has no ``app`` it is given ``app`` (Celery does the same),
    so a ``crontab()`` written in config follows the app's timezone unless it set ``tz=``.

    Raises:
        TypeError: ``value`` is not a number, a timedelta or a schedule.
        ValueError: the interval is not positive.
    """
    if isinstance(value, BaseSchedule):
        if value.app is None:
            value.app = app  # as Celery: a crontab from config takes the app's timezone
        return value
    if isinstance(value, timedelta | int | float) and not isinstance(value, bool):
        return schedule(value, relative=relative, app=app)
    raise TypeError(
        f"schedule {value!r} has type {type(value).__name__}; "
        "use seconds, a timedelta, schedule(...) or crontab(...)"
    )
