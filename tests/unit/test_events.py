"""Events in one process: the dispatcher, the receiver, the wire format, the dump, the view."""

from __future__ import annotations

import io
import logging
import multiprocessing
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chard import Celery
from chard.cli.eventview import ViewState, render
from chard.events import EventDispatcher, State
from chard.events.dumper import Dumper
from chard.exceptions import DecodeError
from chard.protocol.events import EVENTS_CHANNEL, Event, decode_batch, encode_batch
from chard.worker.worker import Worker
from tests.helpers import free_port

HOST = "w1@host"


@pytest.fixture
def app() -> Iterator[Celery]:
    """A memory app whose broker store outlives the worker closing its connections."""
    application = Celery("t", broker=f"memory://events-{uuid.uuid4().hex}", backend="memory://")
    store = application.broker  # holds the named store while the test runs
    yield application
    store.close()
    application.close()


def run_burst_with_events(app: Celery, send_events: bool = True) -> None:
    """Drain the queues with an in-process solo worker (in a thread: no signal handlers)."""
    worker = Worker(app, pool="solo", burst=True, hostname=HOST, send_events=send_events)
    thread = threading.Thread(target=worker.start)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()


def captured(app: Celery, until: str = "worker-offline", timeout: float = 10.0) -> list[Event]:
    """Every event the channel keeps, up to the first ``until``."""
    events: list[Event] = []
    receiver = app.events.Receiver(handlers={"*": events.append}, from_start=True)
    for event in receiver.itercapture(timeout=timeout):
        if event["type"] == until:
            break
    return events


def test_a_worker_sends_celerys_task_and_worker_events(app: Celery) -> None:
    # Given a task that succeeds and one that fails, queued
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def boom() -> None:
        raise ValueError("bad input")

    ok, bad = add.delay(1, 2), boom.delay()

    # When a worker with events on runs them
    run_burst_with_events(app)

    # Then its events tell each task's life and the worker's, with Celery's fields
    events = captured(app)
    by_task = {
        task_id: [e["type"] for e in events if e.get("uuid") == task_id]
        for task_id in (ok.id, bad.id)
    }
    assert by_task[ok.id] == ["task-received", "task-started", "task-succeeded"]
    assert by_task[bad.id] == ["task-received", "task-started", "task-failed"]
    worker_types = [e["type"] for e in events if e["type"].startswith("worker-")]
    assert worker_types[0] == "worker-online"
    assert worker_types[-1] == "worker-offline"
    received = next(e for e in events if e["type"] == "task-received" and e["uuid"] == ok.id)
    assert (received["name"], received["args"], received["kwargs"]) == (add.name, "(1, 2)", "{}")
    assert received["root_id"] == ok.id
    assert received["retries"] == 0
    succeeded = next(e for e in events if e["type"] == "task-succeeded")
    assert succeeded["result"] == "3"
    assert isinstance(succeeded["runtime"], float)
    assert succeeded["runtime"] >= 0
    failed = next(e for e in events if e["type"] == "task-failed")
    assert failed["exception"] == "ValueError('bad input')"
    assert "ValueError: bad input" in failed["traceback"]
    offline = events[-1]
    assert offline["processed"] == 2
    assert offline["active"] == 0
    assert offline["freq"] == 2.0
    assert len(offline["loadavg"]) == 3
    for event in events:
        assert event["hostname"] == HOST
        assert {"timestamp", "utcoffset", "pid", "clock", "local_received"} <= set(event)


def test_retried_and_revoked_tasks_send_their_events(app: Celery) -> None:
    @app.task(bind=True, max_retries=1, default_retry_delay=0)
    def flaky(self: Any) -> None:
        if self.request.retries == 0:
            raise self.retry(exc=KeyError("once"))

    @app.task
    def never() -> None: ...

    retried, revoked = flaky.delay(), never.delay()
    revoked.revoke()

    run_burst_with_events(app)

    events = captured(app)
    retried_types = [e["type"] for e in events if e.get("uuid") == retried.id]
    assert retried_types[:3] == ["task-received", "task-started", "task-retried"]
    assert retried_types[-1] == "task-succeeded"
    retry = next(e for e in events if e["type"] == "task-retried")
    assert retry["exception"] == "KeyError('once')"
    gone = next(e for e in events if e.get("uuid") == revoked.id)
    assert gone["type"] == "task-revoked"
    assert (gone["expired"], gone["terminated"]) == (False, False)


def test_with_task_events_off_a_worker_sends_only_worker_events(app: Celery) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    add.delay(1, 2)
    run_burst_with_events(app, send_events=False)

    types = [e["type"] for e in captured(app)]
    assert types[0] == "worker-online"
    assert types[-1] == "worker-offline"
    assert not [t for t in types if t.startswith("task-")]


def test_without_heartbeat_a_worker_sends_nothing(app: Celery) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    add.delay(1, 2)
    worker = Worker(app, pool="solo", burst=True, hostname=HOST, heartbeat=False)
    thread = threading.Thread(target=worker.start)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()

    assert app.broker.broadcast_tail(EVENTS_CHANNEL) == "0"


def test_task_sent_is_sent_by_clients_only_with_task_send_sent_event(app: Celery) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    add.delay(1, 1)
    assert app.events.client_dispatcher().flush()
    assert app.broker.broadcast_tail(EVENTS_CHANNEL) == "0"

    app.conf.task_send_sent_event = True
    result = add.apply_async((2, 3), queue="math")
    assert app.events.client_dispatcher().flush()

    (sent,) = app.events.Receiver(from_start=True).itercapture(limit=1, timeout=5)
    assert sent["type"] == "task-sent"
    assert (sent["uuid"], sent["name"], sent["args"]) == (result.id, add.name, "(2, 3)")
    assert (sent["queue"], sent["routing_key"]) == ("math", "math")
    assert sent["hostname"].startswith("gen")


def test_receiver_takes_celerys_call_shape_and_sees_only_what_comes_after_it(app: Celery) -> None:
    with app.events.default_dispatcher(hostname="n1") as dispatcher:
        dispatcher.send("worker-heartbeat", freq=2.0)
    got: list[Event] = []
    receiver = app.events.Receiver(object(), handlers={"worker-online": got.append})
    with app.events.default_dispatcher(hostname="n1") as dispatcher:
        dispatcher.send("worker-online", freq=2.0)

    receiver.capture(limit=1, timeout=5)

    assert [e["type"] for e in got] == ["worker-online"]


def test_capture_returns_after_timeout_without_events(app: Celery) -> None:
    receiver = app.events.Receiver(handlers={})
    started = time.monotonic()
    receiver.capture(timeout=0.2)
    assert 0.15 < time.monotonic() - started < 5


def test_capture_with_a_limit_keeps_the_rest_of_a_batch_for_the_next_call(app: Celery) -> None:
    receiver = app.events.Receiver()
    dispatcher = app.events.Dispatcher(hostname="n")
    for index in range(3):
        dispatcher.send("task-started", uuid=f"t{index}")
    dispatcher.close()  # one batch of three

    first = [e["uuid"] for e in receiver.itercapture(limit=2, timeout=5)]
    rest = [e["uuid"] for e in receiver.itercapture(limit=1, timeout=5)]

    assert (first, rest) == (["t0", "t1"], ["t2"])


def test_bad_batches_and_events_are_skipped_with_a_log_line(
    app: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    receiver = app.events.Receiver()
    good = {"type": "worker-online", "hostname": "n", "timestamp": 1.0}
    app.broker.broadcast(EVENTS_CHANNEL, b"\xff not json")
    app.broker.broadcast(EVENTS_CHANNEL, b'{"v": 99, "events": []}')
    app.broker.broadcast(EVENTS_CHANNEL, b'["a", "list"]')
    app.broker.broadcast(EVENTS_CHANNEL, encode_batch([{"type": "x"}, "junk", good]))  # type: ignore[list-item]

    with caplog.at_level(logging.WARNING, logger="chard.events.receiver"):
        events = list(receiver.itercapture(limit=1, timeout=5))

    assert [e["type"] for e in events] == ["worker-online"]
    messages = [r.getMessage() for r in caplog.records]
    assert any("not JSON" in m for m in messages)
    assert any("version 99" in m and "upgrade" in m for m in messages)
    assert any("not an object" in m for m in messages)
    assert any("2 malformed event(s)" in m for m in messages)


def test_decode_batch_refuses_other_versions_and_encode_survives_odd_values() -> None:
    with pytest.raises(DecodeError, match="version 2"):
        decode_batch(b'{"v": 2, "events": []}')
    odd = {"type": "t", "hostname": "h", "timestamp": 1.0, "value": object()}
    (event,), dropped = decode_batch(encode_batch([odd]))
    assert dropped == 0
    assert event["value"].startswith("<object object")


def test_disable_stops_sending_and_enable_starts_again(app: Celery) -> None:
    calls: list[str] = []
    dispatcher = EventDispatcher(app, "n", enabled=False)
    dispatcher.on_enabled.add(lambda: calls.append("on"))
    dispatcher.on_disabled.add(lambda: calls.append("off"))

    assert dispatcher.send("task-started", uuid="a") is None
    dispatcher.enable()
    assert dispatcher.enabled
    assert dispatcher.send("task-started", uuid="b") is not None
    dispatcher.disable()
    assert dispatcher.send("task-started", uuid="c") is None
    dispatcher.close()

    assert calls == ["on", "off"]
    events = list(app.events.Receiver(from_start=True).itercapture(timeout=0.5))
    assert [e["uuid"] for e in events] == ["b"]


def _send_once_enabled(dispatcher: EventDispatcher, checked: Any) -> None:
    """In a forked child: wait for the parent to enable events, then send one and flush."""
    if dispatcher.enabled:
        raise SystemExit(3)  # it must start off
    checked.set()
    deadline = time.monotonic() + 20
    while not dispatcher.enabled:
        if time.monotonic() > deadline:
            raise SystemExit(4)
        time.sleep(0.01)  # polling a flag in shared memory, as a child's next task would
    dispatcher.send("task-started", uuid="from-child")
    dispatcher.close()


def test_enable_in_the_parent_reaches_a_forked_child(tmp_path: Path) -> None:
    # Given a node's dispatcher, off, inherited by a forked child (SQLite: shared by both)
    app = Celery("t", broker=f"sqlite:///{tmp_path}/b.db", backend=None)
    dispatcher = EventDispatcher(app, "node@host", enabled=False)
    context = multiprocessing.get_context("fork")
    checked = context.Event()
    child = context.Process(target=_send_once_enabled, args=(dispatcher, checked))
    child.start()
    assert checked.wait(30)  # the child saw events off

    # When the parent enables events (what control enable_events will call)
    dispatcher.enable()
    child.join(30)

    # Then the child sent its event, from its own process
    assert child.exitcode == 0
    (event,) = app.events.Receiver(from_start=True).itercapture(limit=1, timeout=5)
    assert (event["uuid"], event["pid"], event["hostname"]) == (
        "from-child",
        child.pid,
        "node@host",
    )
    dispatcher.close()
    app.close()


def test_send_never_blocks_on_an_unreachable_broker(caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("redis")
    app = Celery("t", broker=f"redis://127.0.0.1:{free_port()}/0", backend=None)
    dispatcher = EventDispatcher(app, "n")

    started = time.monotonic()
    for index in range(100):
        dispatcher.send("task-started", uuid=str(index))
    assert time.monotonic() - started < 0.5

    with caplog.at_level(logging.WARNING, logger="chard.events.dispatcher"):
        assert dispatcher.flush() is False
    assert any("Cannot send" in r.getMessage() for r in caplog.records)
    with caplog.at_level(logging.WARNING, logger="chard.events.dispatcher"):
        dispatcher.close()
    assert any("Dropped 100 event(s)" in r.getMessage() for r in caplog.records)


def test_dumper_prints_celerys_lines() -> None:
    out = io.StringIO()
    dumper = Dumper(out)
    base = {"hostname": HOST, "timestamp": 0.5, "utcoffset": 0, "pid": 7, "clock": 1}
    dumper.on_event(
        {
            **base,
            "type": "task-received",
            "uuid": "u1",
            "name": "add",
            "args": "(1,)",
            "kwargs": "{}",
        }
    )
    dumper.on_event(
        {**base, "type": "task-failed", "uuid": "u1", "exception": "E()", "traceback": "a\nb"}
    )
    dumper.on_event({**base, "type": "worker-heartbeat", "freq": 2.0})
    dumper.on_event({**base, "type": "task-succeeded", "uuid": "unknown"})

    lines = out.getvalue().splitlines()
    stamp = "[1970-01-01 00:00:00.500000+00:00]"
    assert lines == [
        f"{HOST} {stamp} task received: add(u1) args=(1,) kwargs={{}} clock=1, pid=7, utcoffset=0",
        f"{HOST} {stamp} task failed: add(u1) args=(1,) kwargs={{}} clock=1, exception=E(), "
        "pid=7, traceback=a\\nb, utcoffset=0",
        f"{HOST} {stamp} heartbeat: clock=1, freq=2.0, pid=7, utcoffset=0",
        f"{HOST} {stamp} task succeeded:  clock=1, pid=7, utcoffset=0",
    ]


def test_the_live_view_shows_workers_tasks_and_a_tasks_detail() -> None:
    state = State()
    base = {"hostname": HOST, "clock": 0}
    state.feed(
        [
            {**base, "type": "worker-heartbeat", "timestamp": 100.0, "freq": 2.0, "active": 1,
             "processed": 5, "loadavg": [0.5, 0.25, 0.0]},
            {**base, "type": "task-received", "timestamp": 100.5, "uuid": "u1", "name": "proj.add"},
            {**base, "type": "task-succeeded", "timestamp": 101.0, "uuid": "u1", "result": "3",
             "runtime": 0.25},
        ]
    )  # fmt: skip
    view = ViewState(show_detail=True)

    lines = render(state, view, now=101.0, width=200, height=40)
    text = "\n".join(lines)

    assert lines[0].startswith("chard events: 1 worker(s) online, 1 task(s)")
    assert any(HOST in line and "ONLINE" in line and "processed      5" in line for line in lines)
    assert any(
        line.startswith("> u1") and "SUCCESS" in line and "0.250000s" in line for line in lines
    )
    assert "TASK u1" in text
    assert "result: 3" in text
    assert "timeline:" in text
    assert "received" in text
    assert "succeeded" in text
    assert all(len(line) < 200 for line in lines)
    assert len(render(state, view, now=101.0, width=30, height=5)) == 5


def test_a_task_sends_custom_events_even_with_task_events_off(app: Celery) -> None:
    @app.task(bind=True)
    def progress(self: Any) -> None:
        self.send_event("task-progress", current=5, total=10)

    result = progress.delay()
    run_burst_with_events(app, send_events=False)

    (event,) = [e for e in captured(app) if e["type"].startswith("task-")]
    assert event["type"] == "task-progress"
    assert (event["uuid"], event["current"], event["total"]) == (result.id, 5, 10)
    assert event["hostname"] == HOST


def test_what_makes_an_event_valid_and_its_group() -> None:
    from chard.protocol.events import group_of, is_valid, utcoffset

    assert is_valid({"type": "task-sent", "hostname": "h", "timestamp": 1})
    assert not is_valid({"type": "task-sent", "hostname": "h", "timestamp": True})
    assert not is_valid({"type": "task-sent", "timestamp": 1.0})
    assert not is_valid(["type", "hostname", "timestamp"])
    assert group_of("task-sent") == "task"
    assert group_of("custom") == "custom"
    assert isinstance(utcoffset(), int)
