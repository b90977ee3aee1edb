"""Beat's Celery options (issue 13): scheduler names, the ``-s`` state file, and the lease guard.

``-s`` is Celery's local state file: checked as Celery would need it, never the place of the
lease. Beat sends nothing unless it holds the lease, counted from before its last renewal.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from chard import Celery
from chard._utils.clock import FakeClock
from chard.beat import Beat, MemoryScheduleStore
from chard.beat.compat import check_scheduler, check_state_file
from chard.exceptions import BrokerConnectionError, ImproperlyConfigured
from tests.helpers import free_port

T0 = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)


def make_app(**settings: object) -> Celery:
    return Celery("compat", broker="memory://", set_as_current=False, **settings)


# -- scheduler names --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        None,
        "",
        "celery.beat:PersistentScheduler",
        "celery.beat.PersistentScheduler",
        "celery.beat:Scheduler",
        "chard.beat:Beat",
    ],
)
def test_celery_names_for_the_built_in_scheduler_are_accepted(name: str | None) -> None:
    check_scheduler(name)


@pytest.mark.parametrize(
    ("name", "instead"),
    [
        ("django_celery_beat.schedulers:DatabaseScheduler", "chard -A proj beat schedule add"),
        ("django_celery_beat.schedulers.DatabaseScheduler", "beat_schedule"),
        ("redbeat.RedBeatScheduler", "as RedBeat does"),
        ("myproj.beat:CustomScheduler", "one scheduler"),
    ],
)
def test_other_schedulers_are_refused_with_what_to_use_instead(name: str, instead: str) -> None:
    with pytest.raises(ImproperlyConfigured) as caught:
        check_scheduler(name)

    message = str(caught.value)
    assert repr(name) in message
    assert instead in message
    assert "celery.beat:PersistentScheduler" in message  # the accepted value
    assert "\n" not in message


def test_beat_scheduler_setting_is_checked_when_beat_is_built() -> None:
    app = make_app(beat_scheduler="django_celery_beat.schedulers:DatabaseScheduler")

    with pytest.raises(ImproperlyConfigured, match="DatabaseScheduler"):
        Beat(app)
    Beat(app, scheduler="celery.beat.PersistentScheduler")  # the option wins over the setting


# -- the state file ---------------------------------------------------------------------------


def test_a_state_file_in_a_writable_directory_is_accepted_and_not_created(tmp_path: Path) -> None:
    path = check_state_file(tmp_path / "celerybeat-schedule")

    assert path == tmp_path / "celerybeat-schedule"
    assert list(tmp_path.iterdir()) == []  # the probe left nothing behind


def test_a_state_file_in_a_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImproperlyConfigured) as caught:
        check_state_file(tmp_path / "nope" / "celerybeat-schedule")

    assert "does not exist" in str(caught.value)
    assert str(tmp_path / "nope") in str(caught.value)


def test_a_state_file_in_an_unwritable_directory_is_refused() -> None:
    # /sys refuses new files even to root (a chmod'ed tmp dir would not stop root)
    with pytest.raises(ImproperlyConfigured, match="'/sys' is not writable"):
        check_state_file("/sys/celerybeat-schedule")


def test_a_directory_given_as_the_state_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImproperlyConfigured, match="is a directory"):
        check_state_file(tmp_path)


def test_setup_checks_the_state_file_before_touching_the_broker(tmp_path: Path) -> None:
    store = MemoryScheduleStore()
    beat = Beat(make_app(), store=store, schedule_filename=str(tmp_path / "no" / "state"))

    with pytest.raises(ImproperlyConfigured, match="does not exist"):
        beat.setup()
    assert store.lease_holder() is None  # it never tried to lead


# -- the lease guard and start-up -------------------------------------------------------------


class SlowReloadStore(MemoryScheduleStore):
    """A real memory store whose reads take ``delay`` seconds of the fake clock, once armed.

    While the clock moves, ``rival`` takes the lease if it has lapsed: a beat whose reload
    outlasted its lease must notice before it sends.
    """

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.fake = clock
        self.delay = 0.0

    def _read_definitions(self) -> dict[str, str]:
        if self.delay:
            self.fake.advance(self.delay)
            self.delay = 0.0
            self.acquire_lease("rival", 30.0)
        return super()._read_definitions()


def test_a_beat_whose_reload_outlasted_its_lease_sends_nothing() -> None:
    # Given a leader of a 1 s entry
    clock = FakeClock(T0.timestamp())
    store = SlowReloadStore(clock)
    app = make_app(beat_schedule={"tick": {"task": "compat.tick", "schedule": 1.0}})
    beat = Beat(app, store=store, clock=clock, owner="me", lease_timeout=2.0)
    beat.setup()
    beat.run_once()
    clock.advance(1.5)

    # When its next reload takes 3 s, during which its lease lapses and a rival takes it
    store.delay = 3.0
    beat._next_reload = 0.0
    beat.run_once()

    # Then it stood down without sending the entry that came due meanwhile
    assert beat.is_leader is False
    assert app.broker.fetch(["celery"], 10, 0) == []
    holder = store.lease_holder()
    assert holder is not None
    assert holder.owner == "rival"


def test_an_unreachable_broker_without_start_up_retries_fails_at_once_redacted(
    tmp_path: Path,
) -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    app = Celery(
        "compat", broker=url, set_as_current=False, broker_connection_retry_on_startup=False
    )
    beat = Beat(app, schedule_filename=str(tmp_path / "celerybeat-schedule"))

    with pytest.raises(BrokerConnectionError) as caught:
        beat.setup()

    assert "hunter2" not in str(caught.value)
    assert "after 1 attempt(s)" in str(caught.value)
    assert beat.is_leader is False
