"""chard.events.state: the cluster folded from events, with no I/O and bounded memory."""

from __future__ import annotations

from typing import Any

from chard import states
from chard.events.state import MAX_TIMELINE, State
from chard.protocol.events import Event


def ev(type_: str, stamp: float, hostname: str = "w1@host", **fields: Any) -> Event:
    return {"type": type_, "hostname": hostname, "timestamp": stamp, "clock": 0, **fields}


def task_life(
    uuid: str, start: float, *, end: str = "task-succeeded", **end_fields: Any
) -> list[Event]:
    return [
        ev("task-sent", start, hostname="gen1@client", uuid=uuid, name="proj.add", args="(1, 2)"),
        ev("task-received", start + 0.1, uuid=uuid, name="proj.add", args="(1, 2)", retries=0),
        ev("task-started", start + 0.2, uuid=uuid),
        ev(end, start + 0.3, uuid=uuid, **end_fields),
    ]


def test_a_task_moves_through_its_states_and_keeps_its_timeline() -> None:
    state = State()
    events = task_life("t1", 100.0, result="3", runtime=0.05)

    seen = []
    for event in events:
        state.event(event)
        seen.append(state.tasks["t1"].state)

    assert seen == [states.PENDING, states.RECEIVED, states.STARTED, states.SUCCESS]
    task = state.tasks["t1"]
    assert (task.name, task.args, task.result, task.runtime) == ("proj.add", "(1, 2)", "3", 0.05)
    assert task.worker == "w1@host"  # the worker's, not the client's that sent it
    assert [kind for kind, _ in task.timeline] == [e["type"] for e in events]
    assert task.when("task-started") == 100.2
    assert state.event_count == state.task_count == 4


def test_a_late_event_does_not_move_a_task_back_but_fills_its_fields() -> None:
    # Given a task whose started and succeeded events came before its received event
    state = State()
    state.feed([ev("task-started", 1.0, uuid="t1"), ev("task-succeeded", 2.0, uuid="t1")])

    # When the received event arrives late
    state.event(ev("task-received", 0.5, uuid="t1", name="proj.add", args="(1,)"))

    # Then the task stays SUCCESS, and gains the name and args only received carries
    task = state.tasks["t1"]
    assert task.state == states.SUCCESS
    assert (task.name, task.args) == ("proj.add", "(1,)")
    assert task.timestamp == 2.0


def test_failed_tasks_keep_exception_and_traceback_and_group_by_state() -> None:
    state = State()
    state.feed(task_life("ok", 10.0, result="1"))
    state.feed(
        task_life("bad", 20.0, end="task-failed", exception="ValueError('x')", traceback="Tb")
    )
    state.feed(task_life("gone", 30.0, end="task-revoked", terminated=True, expired=False))

    assert state.counts_by_state() == {states.SUCCESS: 1, states.FAILURE: 1, states.REVOKED: 1}
    bad = state.tasks_by_state()[states.FAILURE][0]
    assert (bad.exception, bad.traceback) == ("ValueError('x')", "Tb")
    assert state.tasks["gone"].extra == {"terminated": True, "expired": False}
    assert [t.uuid for t in state.tasks_by_time()] == ["gone", "bad", "ok"]
    assert state.tasks["gone"].info()["state"] == states.REVOKED


def test_retried_then_succeeded_ends_success() -> None:
    state = State()
    state.feed(
        [
            ev("task-received", 1.0, uuid="t", name="n"),
            ev("task-started", 1.1, uuid="t"),
            ev("task-retried", 1.2, uuid="t", exception="KeyError()"),
            ev("task-received", 2.0, uuid="t", name="n", retries=1),
            ev("task-started", 2.1, uuid="t"),
            ev("task-succeeded", 2.2, uuid="t"),
        ]
    )
    assert state.tasks["t"].state == states.SUCCESS
    assert state.tasks["t"].retries == 1


def test_workers_are_alive_while_heartbeats_are_fresh_and_offline_ends_them() -> None:
    state = State()
    state.event(
        ev("worker-online", 100.0, freq=2.0, active=0, processed=0, loadavg=[0.1, 0.2, 0.3])
    )
    worker = state.workers["w1@host"]

    assert worker.is_alive(101.0)
    assert worker.status(103.9) == "ONLINE"
    assert not worker.is_alive(104.1)  # two missed heartbeats
    assert worker.heartbeat_age(101.5) == 1.5

    state.event(ev("worker-heartbeat", 104.0, freq=2.0, active=2, processed=7))
    assert worker.is_alive(105.0)
    assert (worker.active, worker.processed) == (2, 7)
    assert [w.hostname for w in state.alive_workers(105.0)] == ["w1@host"]

    state.event(ev("worker-offline", 105.0))
    assert not worker.is_alive(105.0)
    assert state.alive_workers(105.0) == []


def test_heartbeat_age_uses_the_local_receipt_time_when_present() -> None:
    # A worker whose clock is off by an hour is still alive by the receiver's clock.
    state = State()
    state.event({**ev("worker-heartbeat", 5000.0, freq=2.0), "local_received": 1000.0})
    assert state.workers["w1@host"].is_alive(1001.0)


def test_memory_is_bounded_tasks_workers_and_timelines() -> None:
    state = State(max_tasks=3, max_workers=2)
    for index in range(5):
        state.event(ev("task-received", float(index), hostname=f"w{index}", uuid=f"t{index}"))
    assert list(state.tasks) == ["t2", "t3", "t4"]  # the least recently changed went first
    assert list(state.workers) == ["w3", "w4"]

    for index in range(MAX_TIMELINE + 10):
        state.event(ev("task-retried", 10.0 + index, hostname="w4", uuid="t4"))
    assert len(state.tasks["t4"].timeline) == MAX_TIMELINE


def test_rate_counts_finished_tasks_in_the_window() -> None:
    state = State()
    for index in range(10):
        state.feed(task_life(f"t{index}", 100.0 + index))  # ends at 100.3 .. 109.3
    assert state.rate(now=110.0, window=5.0) == 5 / 5.0
    assert state.rate(now=200.0, window=5.0) == 0.0


def test_unknown_and_malformed_events_are_counted_and_otherwise_ignored() -> None:
    state = State()
    state.event(ev("custom-thing", 1.0))
    state.event(ev("task-received", 1.0))  # no uuid
    assert state.event_count == 2
    assert not state.tasks
    assert state.task_types() == []
