"""Revocations, worker side: the in-memory record fed by the broker's log, and discarding.

In-process, on the memory broker (SQLite where results must outlive the worker),
with the real pools; the CLI worker tests are in tests/integration/test_revoke_worker.py.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chard import Celery, chain, chord, signals, states
from chard._utils.clock import FakeClock
from chard.brokers.base import Broker, Delivery
from chard.brokers.memory import MemoryBroker
from chard.exceptions import ChordError, TaskRevokedError
from chard.protocol.control import REVOKE_CHANNEL, Revocation
from chard.protocol.message import TaskMessage
from chard.worker import execute
from chard.worker.revocations import Revocations
from chard.worker.worker import Worker
from tests.helpers import free_port, wait_for

_FORK = multiprocessing.get_context("fork")


@pytest.fixture
def stopping() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()  # ends any reading thread a test started


def revocations_for(
    app: Celery, stopping: threading.Event, clock: FakeClock | None = None, **kwargs: Any
) -> Revocations:
    return Revocations(app, None, stopping, hostname="unit@host", clock=clock, **kwargs)


def send(app: Celery, ids: list[str], now: float, ttl: float = 60.0, **kwargs: Any) -> None:
    revocation = Revocation.create(ids, now=now, ttl=ttl, **kwargs)
    app.broker.broadcast(REVOKE_CHANNEL, revocation.to_payload())


def test_start_reads_the_whole_log_dropping_expired_and_malformed_entries(
    app: Celery, stopping: threading.Event, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a log with an expired revocation, a malformed entry and a live one
    clock = FakeClock()
    send(app, ["old"], now=clock.time() - 120, ttl=60)
    app.broker.broadcast(REVOKE_CHANNEL, b"not json")
    send(app, ["live-1", "live-2"], now=clock.time() - 10, ttl=60)

    # When a worker's record starts
    revocations = revocations_for(app, stopping, clock)
    with caplog.at_level(logging.INFO, "chard.worker"):
        revocations.start()

    # Then it knows the live ids only, and said what it skipped
    assert [revocations.is_revoked(i) for i in ("live-1", "live-2", "old", "never")] == [
        True,
        True,
        False,
        False,
    ]
    assert len(revocations) == 2
    assert "Ignoring a malformed revocation" in caplog.text
    assert "2 revoked task id(s) in force" in caplog.text


def test_a_revocation_is_forgotten_when_it_expires(app: Celery, stopping: threading.Event) -> None:
    clock = FakeClock()
    send(app, ["t"], now=clock.time(), ttl=60)
    revocations = revocations_for(app, stopping, clock)
    revocations.start()
    assert revocations.is_revoked("t")

    # When its 60 s pass, it no longer counts, and the next entry drops it from memory
    clock.advance(60)
    assert not revocations.is_revoked("t")
    send(app, ["u"], now=clock.time())
    assert wait_for(lambda: revocations.is_revoked("u"))
    assert len(revocations) == 1


def test_the_reading_thread_takes_in_revocations_sent_later(
    app: Celery, stopping: threading.Event, caplog: pytest.LogCaptureFixture
) -> None:
    revocations = revocations_for(app, stopping)
    revocations.start()
    assert not revocations.is_revoked("late")

    with caplog.at_level(logging.INFO, "chard.worker"):
        app.control.revoke(["late", "later"])
        wait_for(lambda: revocations.is_revoked("late") and revocations.is_revoked("later"))

    assert "Tasks flagged as revoked: late, later" in caplog.text
    stopping.set()
    revocations.join(timeout=5)
    assert revocations._thread is not None
    assert not revocations._thread.is_alive()


def test_memory_is_bounded_by_forgetting_the_oldest(
    app: Celery, stopping: threading.Event, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    send(app, ["a", "b", "c", "d", "e"], now=clock.time())
    revocations = revocations_for(app, stopping, clock, max_ids=3)

    revocations.start()

    assert [revocations.is_revoked(i) for i in "abcde"] == [False, False, True, True, True]
    assert "Forgot 2 unexpired revocation(s): more than 3 revoked task ids" in caplog.text


def test_terminate_is_remembered_when_the_id_is_revoked_again_without_it(
    app: Celery, stopping: threading.Event
) -> None:
    clock = FakeClock()
    send(app, ["x"], now=clock.time(), terminate=True, signal="SIGKILL")
    send(app, ["x", "y"], now=clock.time())
    revocations = revocations_for(app, stopping, clock)

    revocations.start()

    assert revocations.is_terminated("x")
    assert not revocations.is_terminated("y")
    assert revocations.is_revoked("y")


def test_a_broker_without_broadcast_channels_turns_revocations_off(
    app: Celery,
    stopping: threading.Event,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a broker that keeps the interface's default (a third-party broker, say)
    monkeypatch.setattr(MemoryBroker, "broadcast_read", Broker.broadcast_read)
    revocations = revocations_for(app, stopping)

    revocations.start()

    assert "Revocations are off: the MemoryBroker broker has no broadcast channels" in caplog.text
    assert revocations._thread is None
    assert not revocations.is_revoked("anything")


def test_start_retries_a_broker_that_is_down_until_the_worker_stops(
    stopping: threading.Event, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a broker URL where nothing listens
    app = Celery("down", broker=f"redis://127.0.0.1:{free_port()}/0", set_as_current=False)
    revocations = revocations_for(app, stopping)
    starter = threading.Thread(target=revocations.start, daemon=True)

    # When the record starts, it keeps trying (the worker must not run revoked tasks)
    with caplog.at_level(logging.WARNING, "chard.worker"):
        starter.start()
        wait_for(lambda: "Cannot read revocations" in caplog.text, timeout=15)
    assert starter.is_alive()

    # Then a stop ends it, without a reading thread
    stopping.set()
    starter.join(timeout=10)
    assert not starter.is_alive()
    assert revocations._thread is None
    app.close()


def fetch_message(app: Celery, queue: str = "celery") -> tuple[Delivery, TaskMessage]:
    (delivery,) = app.broker.fetch([queue], 1, timeout=1.0)
    return delivery, TaskMessage.from_wire(delivery.body, app.accept_content)


# -- terminating ----------------------------------------------------------------------------------


def test_a_terminating_revocation_asks_to_end_the_task_it_names(
    app: Celery, stopping: threading.Event, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a record whose terminate callback ends only the task "victim"
    asked: list[tuple[str, int]] = []

    def terminate(task_id: str, signum: int) -> bool:
        asked.append((task_id, signum))
        return task_id == "victim"

    revocations = Revocations(app, terminate, stopping, hostname="unit@host")
    revocations.start()

    # When two tasks are revoked with terminate=True and one without
    caplog.set_level(logging.INFO, logger="chard.worker")
    app.control.revoke(["victim", "elsewhere"], terminate=True)
    app.control.revoke("gentle")
    wait_for(lambda: revocations.is_revoked("gentle"))

    # Then terminate was asked for the two (with SIGTERM, Celery's default), not the third
    assert asked == [("victim", signal.SIGTERM), ("elsewhere", signal.SIGTERM)]
    assert revocations.is_terminated("victim")
    assert not revocations.is_terminated("gentle")
    assert "Task elsewhere is not running here; it will be discarded instead" in caplog.text


def record_run(marker: str) -> str:
    """A task body that leaves a trace of each run."""
    with open(marker, "a") as out:
        out.write("ran\n")
    return "ran"


def run_in_child(executor: execute.Executor, payload: execute.JobPayload) -> str:
    """Run the pool target in a forked process, as a prefork child would; return the state."""
    reader, writer = _FORK.Pipe(duplex=False)

    def target() -> None:
        outcome = executor.run(payload)
        assert isinstance(outcome, execute.ExecOutcome)
        writer.send(outcome.state)

    child = _FORK.Process(target=target)
    child.start()
    try:
        assert reader.poll(10), "the child did not answer"
        return str(reader.recv())
    finally:
        child.join(10)


def test_a_task_revoked_after_the_fork_is_discarded_by_the_child_process(
    tmp_path: Path, stopping: threading.Event
) -> None:
    # Given a worker's record made before the fork, on SQLite (a forked child reads the
    # revoke log itself; a memory broker would not be shared)
    url = f"sqlite:///{tmp_path / 'chard.sqlite3'}"
    app = Celery("pooled", broker=url, backend=url, set_as_current=False)
    task = app.task(name="pooled.record")(record_run)
    revocations = Revocations(app, None, stopping, hostname="unit@host")
    executor = execute.Executor(app, "unit@host", revocations.check)
    try:
        revocations.start()
        marker = tmp_path / "ran"
        result = task.delay(str(marker))
        delivery, message = fetch_message(app)

        # When it is revoked after it was admitted, then a child process runs it
        app.control.revoke(result.id)
        wait_for(lambda: revocations.is_revoked(result.id))
        state = run_in_child(
            executor, execute.JobPayload(delivery.body, delivery.queue, 1, message)
        )

        # Then the child discards it instead of running it
        assert state == states.REVOKED
        assert result.state == states.REVOKED
        assert not marker.exists()
        # And a task not revoked still runs there
        other = task.delay(str(marker))
        delivery, message = fetch_message(app)
        payload = execute.JobPayload(delivery.body, delivery.queue, 1, message)
        assert run_in_child(executor, payload) == states.SUCCESS
        assert other.get(timeout=5) == "ran"
    finally:
        app.close()


# -- discarding -----------------------------------------------------------------------------------


def payload_of(delivery: Delivery, message: TaskMessage) -> execute.JobPayload:
    return execute.JobPayload(delivery.body, delivery.queue, delivery.delivery_count, message)


def test_discarding_stores_revoked_and_ends_the_chain_after_it(
    app: Celery, stopping: threading.Event
) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    # Given the first step of a three-step chain, fetched by a worker
    last = chain(add.s(1, 1), add.s(2), add.s(3)).apply_async()
    delivery, message = fetch_message(app)
    seen: list[dict[str, Any]] = []

    def on_revoked(sender: Any, **kwargs: Any) -> None:
        seen.append({"sender": sender, **kwargs})

    signals.task_revoked.connect(on_revoked)
    try:
        # When the worker discards it as revoked
        revocations_for(app, stopping).discard(payload_of(delivery, message), message, "revoked")
    finally:
        signals.task_revoked.disconnect(on_revoked)

    # Then it and the steps that will never run are REVOKED, so get() raises at once
    first = app.AsyncResult(message.id)
    assert first.state == states.REVOKED
    assert isinstance(first.result, TaskRevokedError)
    assert str(first.result) == "revoked"
    assert [last.parent.state, last.state] == [states.REVOKED] * 2  # type: ignore[union-attr]
    with pytest.raises(TaskRevokedError):
        last.get(timeout=1)
    # And Celery's task_revoked signal went out with its arguments
    (event,) = seen
    assert event["sender"] is add
    assert event["request"].id == message.id
    assert (event["terminated"], event["expired"], event["signum"]) == (False, False, None)


def test_discarding_a_chord_member_fails_the_chord(app: Celery, stopping: threading.Event) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def xsum(values: list[int]) -> int:
        return sum(values)

    # Given a chord whose first header task is fetched
    body = chord([add.s(1, 1), add.s(2, 2)], xsum.s()).apply_async()
    delivery, message = fetch_message(app)

    # When it is discarded as revoked
    revocations_for(app, stopping).discard(payload_of(delivery, message), message, "revoked")

    # Then the chord fails at once instead of waiting forever for that member
    with pytest.raises(ChordError, match=f"Dependency {message.id} raised TaskRevokedError"):
        body.get(timeout=1, follow_parents=False)
    with pytest.raises(TaskRevokedError):  # following parents, the member's own error
        body.get(timeout=1)


def test_discarding_respects_ignore_result(app: Celery, stopping: threading.Event) -> None:
    @app.task(ignore_result=True)
    def quiet() -> None:
        return None

    result = quiet.delay()
    delivery, message = fetch_message(app)

    revocations_for(app, stopping).discard(payload_of(delivery, message), message, "revoked")

    assert result.state == states.PENDING


# -- a whole worker ---------------------------------------------------------------------------


def test_a_burst_worker_discards_revoked_messages_and_runs_the_rest(tmp_path: Path) -> None:
    # Given four queued tasks, two of them revoked
    url = f"sqlite:///{tmp_path / 'chard.sqlite3'}"
    app = Celery("burst", broker=url, backend=url, set_as_current=False)
    ran: list[int] = []

    @app.task
    def record(x: int) -> int:
        ran.append(x)
        return x

    results = [record.delay(i) for i in range(4)]
    results[1].revoke()
    app.control.revoke(results[3].id)

    # When a burst worker drains the queue (in a thread: it installs no signal handlers there)
    worker = Worker(app, pool="threads", concurrency=2, burst=True)
    outcome: list[Any] = []
    runner = threading.Thread(target=lambda: outcome.append(worker.start()), daemon=True)
    runner.start()
    runner.join(timeout=30)
    assert not runner.is_alive()

    # Then the revoked bodies never ran, and every state is final
    assert sorted(ran) == [0, 2]
    assert [r.state for r in results] == [states.SUCCESS, states.REVOKED] * 2
    (stats,) = outcome
    assert (stats.received, stats.succeeded, stats.revoked) == (4, 2, 2)
    app.close()
