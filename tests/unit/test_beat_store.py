"""Schedule stores (memory, SQLite, Redis: one contract) and the beat service driven by a clock.

The store contract covers definitions, monotonic run state, the leader lease and firing claims.
The service tests run :meth:`Beat.run_once` with a ``FakeClock`` over a memory broker, so lease
takeover, exactly-once firing and reloads are checked deterministically, without sleeping.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from chard import Celery
from chard._utils.clock import FakeClock
from chard.beat import Beat, MemoryScheduleStore, ScheduleEntry, ScheduleStore
from chard.beat.service import SLOT_HEADER
from chard.beat.store_records import from_micros, slot_key, to_micros
from chard.beat.stores import open_schedule_store
from chard.protocol.message import TaskMessage
from chard.schedules import crontab, schedule
from tests.helpers import drop_postgres_schema, postgres_url, redis_url, wait_for

T0 = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
STORES = [
    "memory",
    "sqlite",
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ScheduleStore]:
    kind = request.param
    if kind == "memory":
        opened: ScheduleStore = MemoryScheduleStore()
    elif kind == "sqlite":
        from chard.beat.store_sqlite import SQLiteScheduleStore

        opened = SQLiteScheduleStore(f"sqlite:///{tmp_path / 'beat.sqlite3'}")
    elif kind == "postgres":
        from chard.beat.store_postgres import PostgresScheduleStore

        url = postgres_url()
        opened = PostgresScheduleStore(url)
    else:
        from chard.beat.store_redis import RedisScheduleStore

        opened = RedisScheduleStore(redis_url())
    yield opened
    opened.close()
    if kind == "postgres":
        drop_postgres_schema(url)


def every(name: str, seconds: float = 10.0, **fields: object) -> ScheduleEntry:
    return ScheduleEntry(name, "proj.tasks.add", schedule(seconds), **fields)  # type: ignore[arg-type]


# -- the store contract ---------------------------------------------------------------------------
def test_added_entries_round_trip_with_their_schedule_and_arguments(store: ScheduleStore) -> None:
    # Given an interval entry and a crontab entry in another zone
    store.add(every("add", 30.0, args=(16, 16), kwargs={"z": 1}, options={"queue": "math"}))
    store.add(ScheduleEntry("cron", "proj.tasks.report", crontab("0,30", "9-17", tz="Asia/Tokyo")))

    # When they are loaded back
    entries, errors = store.load(None)

    # Then everything survives, and the definitions are marked as store-made
    by_name = {e.name: e for e in entries}
    assert errors == []
    assert by_name["add"].schedule == schedule(30.0)
    assert by_name["add"].args == (16, 16)
    assert by_name["add"].kwargs == {"z": 1}
    assert by_name["add"].options == {"queue": "math"}
    assert by_name["cron"].schedule == crontab("0,30", "9-17", tz="Asia/Tokyo")
    assert {r["origin"] for r in store.definitions().values()} == {"store"}


def test_remove_and_enable_edit_one_entry(store: ScheduleStore) -> None:
    store.add(every("a"))
    store.add(every("b"))

    assert store.set_enabled("a", False) is True
    assert store.remove("b") is True
    assert store.remove("b") is False
    assert store.set_enabled("missing", True) is False

    entries, _ = store.load(None)
    assert [(e.name, e.enabled) for e in entries] == [("a", False)]


def test_sync_config_overwrites_config_names_keeps_store_entries_and_enabled_flag(
    store: ScheduleStore,
) -> None:
    # Given a store entry and a config entry that an operator disabled
    store.add(every("mine"))
    store.sync_config([every("conf", 5.0), every("gone")], app_tz=None)
    store.set_enabled("conf", False)

    # When beat restarts with a changed config ("conf" now every 7 s, "gone" removed)
    store.sync_config([every("conf", 7.0)], app_tz=None)

    # Then config wins for its definition, the operator's flag stays, and store entries persist
    entries = {e.name: e for e in store.load(None)[0]}
    assert sorted(entries) == ["conf", "mine"]
    assert entries["conf"].schedule == schedule(7.0)
    assert entries["conf"].enabled is False


def test_config_entries_cannot_be_replaced_or_removed_through_the_store(
    store: ScheduleStore,
) -> None:
    store.sync_config([every("conf")], app_tz=None)

    with pytest.raises(ValueError, match="'conf' comes from beat_schedule"):
        store.add(every("conf"))
    with pytest.raises(ValueError, match="'conf' comes from beat_schedule"):
        store.remove("conf")


def test_a_broken_row_is_reported_by_name_and_the_others_load(store: ScheduleStore) -> None:
    # Given a row with minute 61 (written by hand or an older version) beside a good one
    store.add(every("good"))
    bad = {"task": "proj.t", "schedule": {"crontab": {"minute": "61"}}, "origin": "store"}
    store._write_definition("bad-cron", json.dumps(bad))
    store._write_definition("zero", json.dumps({"task": "t", "schedule": {"every": 0}}))

    entries, errors = store.load(None)

    assert [e.name for e in entries] == ["good"]
    assert any("'bad-cron'" in e and "minute '61'" in e for e in errors), errors
    assert any("'zero'" in e and "not positive" in e for e in errors), errors


def test_run_state_is_exact_and_never_moves_back(store: ScheduleStore) -> None:
    store.add(every("a"))
    later = T0 + timedelta(microseconds=123457)

    store.record_run("a", later, 3)
    store.record_run("a", T0, 1)  # a stale beat's write

    (entry,), _ = store.load(None)
    assert entry.last_run_at == later  # to the microsecond: slot keys depend on it
    assert entry.total_run_count == 3


def test_the_lease_has_one_owner_until_released_or_lapsed(store: ScheduleStore) -> None:
    assert store.acquire_lease("a", 30.0) is True
    assert store.acquire_lease("b", 30.0) is False
    assert store.acquire_lease("a", 30.0) is True  # renewal

    store.release_lease("b")  # not the owner: no effect
    assert store.acquire_lease("b", 30.0) is False
    store.release_lease("a")
    assert store.acquire_lease("b", 0.2) is True

    # When b stops renewing, its lease lapses and a takes over
    wait_for(lambda: store.acquire_lease("a", 30.0), timeout=3.0)
    assert store.acquire_lease("b", 30.0) is False


def test_the_lease_holder_is_readable_while_held(store: ScheduleStore) -> None:
    assert store.lease_holder() is None

    store.acquire_lease("host-a:1:x", 30.0)
    holder = store.lease_holder()

    assert holder is not None
    assert holder.owner == "host-a:1:x"
    assert 25.0 < holder.expires_in <= 30.0
    store.release_lease("host-a:1:x")
    assert store.lease_holder() is None


def test_a_firing_is_claimed_once(store: ScheduleStore) -> None:
    assert store.claim_firing("a", T0) is True
    assert store.claim_firing("a", T0) is False
    assert store.claim_firing("a", T0 + timedelta(seconds=1)) is True
    assert store.claim_firing("b", T0) is True


def test_concurrent_claims_of_one_slot_have_one_winner(store: ScheduleStore) -> None:
    wins: list[bool] = []
    barrier = threading.Barrier(8)

    def claim() -> None:
        barrier.wait()
        wins.append(store.claim_firing("race", T0))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(wins) == [False] * 7 + [True]


def test_micros_and_slot_keys_are_exact() -> None:
    dt = datetime(2024, 3, 31, 1, 59, 59, 999999, tzinfo=UTC)
    assert from_micros(to_micros(dt)) == dt
    assert slot_key("n", dt) == "n:2024-03-31T01:59:59.999999+00:00"


def test_open_schedule_store_follows_the_broker(tmp_path: Path) -> None:
    sqlite_app = Celery("s", broker=f"sqlite:///{tmp_path / 'b.sqlite3'}", set_as_current=False)
    memory_app = Celery("m", broker="memory://", set_as_current=False)

    assert "b.sqlite3" in repr(open_schedule_store(sqlite_app))
    assert open_schedule_store(memory_app) is open_schedule_store(memory_app)


def test_beside_rabbitmq_the_store_is_the_result_backends_else_a_local_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given RabbitMQ brokers (which hold no lease), one with a SQLite result backend
    backend = tmp_path / "results.sqlite3"
    shared = Celery(
        "a", broker="amqp://guest:secret@rabbit//", backend=f"sqlite:///{backend}",
        set_as_current=False,
    )  # fmt: skip
    alone = Celery("b", broker="amqp://guest:secret@rabbit//", backend="rpc://",
                   set_as_current=False)  # fmt: skip

    # Then beat keeps its lease in the backend's database, or else beside its state file
    assert "results.sqlite3" in repr(open_schedule_store(shared))
    with caplog.at_level(logging.WARNING, logger="chard.beat.stores"):
        local = open_schedule_store(alone, tmp_path / "celerybeat-schedule")
    assert "celerybeat-schedule.chard.sqlite3" in repr(local)
    assert "only beats sharing that file agree" in caplog.text
    assert "secret" not in caplog.text


# -- the service, driven by a fake clock ----------------------------------------------------------
def make_app(**settings: Any) -> Celery:
    app = Celery("svc", broker="memory://", set_as_current=False, **settings)

    @app.task(name="proj.tasks.add")
    def add(x: int, y: int) -> int:
        return x + y

    return app


def sent_slots(app: Celery) -> list[str]:
    """Drain the default queue; return each message's beat slot header."""
    slots = []
    for delivery in app.broker.fetch(["celery"], 1000, 0):
        message = TaskMessage.from_wire(delivery.body, app.accept_content)
        slots.append(message.extra_headers[SLOT_HEADER])
        delivery.ack()
    return slots


def start_beat(
    app: Celery, store: ScheduleStore, clock: FakeClock, owner: str, **kwargs: float
) -> Beat:
    beat = Beat(app, store=store, clock=clock, owner=owner, **kwargs)
    beat.setup()
    return beat


def test_two_beats_send_each_slot_once_across_a_leader_crash() -> None:
    # Given two beats on one store and a 1 s entry
    clock = FakeClock(T0.timestamp())
    store = MemoryScheduleStore(clock)
    app = make_app(beat_schedule={"add": {"task": "proj.tasks.add", "schedule": 1.0}})
    leader = start_beat(app, store, clock, "leader", lease_timeout=3.0)
    standby = start_beat(app, store, clock, "standby", lease_timeout=3.0)

    # When both loop for 3 s, then the leader dies (stops looping) and time goes on
    for _ in range(30):
        leader.run_once()
        standby.run_once()
        clock.advance(0.1)
    for _ in range(60):
        standby.run_once()
        clock.advance(0.1)

    # Then the standby took over after the lease lapsed, and no slot was sent twice
    slots = sent_slots(app)
    assert leader.is_leader is True  # it never noticed: it was dead
    assert standby.is_leader is True
    assert len(slots) == len(set(slots))
    # The leader sent the slots due before it died (each tick lands up to 0.1 s late, which
    # the next slot inherits, as in Celery); the standby, once the lease lapsed at ~5.9 s, sent
    # the next slot after the leader's last run once (the missed ones collapse), then resumed.
    times = [datetime.fromisoformat(s.partition(":")[2]) - T0 for s in slots]
    assert [round(t.total_seconds(), 1) for t in times] == [1.0, 2.1, 3.2, 7.0, 8.1]


def test_a_leader_killed_between_its_send_and_its_record_leaves_no_gap() -> None:
    # Given a leader that sent the 1 s slot, and a standby on the same store
    clock = FakeClock(T0.timestamp())
    store = MemoryScheduleStore(clock)
    app = make_app(beat_schedule={"add": {"task": "proj.tasks.add", "schedule": 1.0}})
    leader = start_beat(app, store, clock, "leader", lease_timeout=3.0)
    standby = start_beat(app, store, clock, "standby", lease_timeout=3.0)
    for _ in range(15):
        leader.run_once()
        standby.run_once()
        clock.advance(0.1)
    before = sent_slots(app)
    last_run = leader.scheduler.entries["add"].last_run_at
    assert last_run is not None

    # When it claims (and sends) its next slot but is killed before recording that run
    claimed = last_run + timedelta(seconds=1)
    assert store.claim_firing("add", claimed)
    for _ in range(60):
        standby.run_once()
        clock.advance(0.1)

    # Then the standby skips the claimed slot and sends the one right after it (late, once),
    # instead of jumping to a new rhythm from the moment it took over (issue 13)
    after = sent_slots(app)
    first = datetime.fromisoformat(after[0].partition(":")[2])
    assert len(before) == 1
    assert first == claimed + timedelta(seconds=1)
    assert len(after) == len(set(after))


def test_a_paused_leader_that_resumes_cannot_send_a_slot_again() -> None:
    # Given a leader that fired, then froze past its lease while a standby took over
    clock = FakeClock(T0.timestamp())
    store = MemoryScheduleStore(clock)
    app = make_app(beat_schedule={"add": {"task": "proj.tasks.add", "schedule": 1.0}})
    leader = start_beat(app, store, clock, "leader", lease_timeout=2.0)
    standby = start_beat(app, store, clock, "standby", lease_timeout=2.0)
    leader.run_once()
    standby.run_once()
    clock.advance(1.0)
    leader.run_once()  # sends the 1 s slot
    frozen_scheduler = leader.scheduler
    clock.advance(2.5)
    standby.run_once()  # takes over: sends the missed 2 s slot once

    # When the old leader wakes up and ticks with its stale state before renewing
    due, _ = frozen_scheduler.tick(datetime.fromtimestamp(clock.time(), UTC))
    for entry in due:
        leader._fire(entry, entry.schedule.next_after(T0 + timedelta(seconds=1)), T0)

    # Then its claim of the same slot fails: nothing is sent twice
    slots = sent_slots(app)
    assert len(slots) == len(set(slots)) == 2


def test_restart_resumes_from_the_stored_last_run() -> None:
    # Given a beat that ran an entry three times, then stopped
    clock = FakeClock(T0.timestamp())
    store = MemoryScheduleStore(clock)
    app = make_app(beat_schedule={"add": {"task": "proj.tasks.add", "schedule": 10.0}})
    first = start_beat(app, store, clock, "first")
    for _ in range(31):
        first.run_once()
        clock.advance(1.0)
    first._shutdown()
    assert len(sent_slots(app)) == 3

    # When a new beat starts 25 s later (two runs missed)
    clock.advance(25.0)
    second = start_beat(app, store, clock, "second")
    second.run_once()
    second.run_once()

    # Then it sends one run for the missed slots (not a burst), for the slot after the last run
    (slot,) = sent_slots(app)
    assert slot == slot_key("add", T0 + timedelta(seconds=40))
    assert second.scheduler.entries["add"].total_run_count == 4


def test_store_edits_are_picked_up_without_a_restart() -> None:
    clock = FakeClock(T0.timestamp())
    store = MemoryScheduleStore(clock)
    app = make_app()
    beat = start_beat(app, store, clock, "only")
    beat.run_once()

    # When an entry is added through the Python API while beat runs
    store.add(every("new", 1.0, args=(1, 2)))
    for _ in range(25):
        beat.run_once()
        clock.advance(0.1)

    # Then it runs; after it is disabled it stops
    assert len(sent_slots(app)) >= 1
    store.set_enabled("new", False)
    for _ in range(30):
        beat.run_once()
        clock.advance(0.1)
    assert len(sent_slots(app)) <= 1  # at most one in flight before the reload


def test_bad_and_unknown_entries_are_reported_and_the_good_ones_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock(T0.timestamp())
    store = MemoryScheduleStore(clock)
    app = make_app(
        beat_schedule={
            "good": {"task": "proj.tasks.add", "schedule": 1.0, "args": (1, 1)},
            "zero": {"task": "proj.tasks.add", "schedule": 0},
            "negative": {"task": "proj.tasks.add", "schedule": timedelta(seconds=-5)},
            "ghost": {"task": "proj.tasks.missing", "schedule": 1.0},
        }
    )
    with caplog.at_level("WARNING"):
        beat = start_beat(app, store, clock, "only")
        for _ in range(12):
            beat.run_once()
            clock.advance(0.1)

    assert any("'zero'" in e for e in beat.errors)
    assert any("'negative'" in e for e in beat.errors)
    assert "entry 'ghost' sends task 'proj.tasks.missing'" in caplog.text
    assert sorted(s.split(":")[0] for s in sent_slots(app)) == ["ghost", "good"]


def test_a_crontab_fires_at_the_wall_clock_time_of_the_app_timezone() -> None:
    # Given an app in Berlin (UTC+2 in summer) and a 09:00 crontab added through the store
    start = datetime(2024, 7, 1, 6, 59, 59, tzinfo=UTC)
    clock = FakeClock(start.timestamp())
    store = MemoryScheduleStore(clock)
    app = make_app(timezone="Europe/Berlin")
    beat = start_beat(app, store, clock, "only")
    store.add(ScheduleEntry("nine", "proj.tasks.add", crontab(0, 9)))
    beat._reload()
    beat.run_once()
    assert sent_slots(app) == []

    # When the clock passes 07:00 UTC
    clock.advance(1.5)
    beat.run_once()

    # Then it fires for 09:00 local time
    assert sent_slots(app) == [slot_key("nine", datetime(2024, 7, 1, 7, 0, tzinfo=UTC))]


def test_stop_wakes_the_loop_at_once() -> None:
    app = make_app(beat_schedule={"add": {"task": "proj.tasks.add", "schedule": 3600.0}})
    beat = Beat(app, owner="only")
    beat.setup()
    thread = beat.start_thread()
    wait_for(lambda: beat.is_leader, timeout=5.0)

    beat.stop()
    thread.join(timeout=2.0)

    assert not thread.is_alive()
    assert open_schedule_store(app).acquire_lease("other", 5.0) is True  # released on stop
