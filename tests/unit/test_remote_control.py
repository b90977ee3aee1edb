"""Remote control against a real in-process worker (threads pool) on a shared memory broker.

The worker's mailbox opens its own broker instance, so the broker is a named
``memory://`` store that the client's instance shares. What is asserted is what a
client sees: replies keyed by node name, in Celery's shapes.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from chard import Celery
from chard.protocol.control import (
    CONTROL_CHANNEL,
    REPLY_CHANNEL,
    ControlReply,
    ControlRequest,
)
from chard.worker.worker import Worker
from tests.helpers import wait_for

NODE = "w1@unit"


@pytest.fixture
def app() -> Iterator[Celery]:
    application = Celery("rc", broker=f"memory://rc-{uuid.uuid4().hex}", backend="memory://")

    @application.task(name="rc.add")
    def add(x: int, y: int) -> int:
        return x + y

    yield application
    application.close()


@pytest.fixture
def node(app: Celery) -> Iterator[Worker]:
    """A threads worker named ``w1@unit``, consuming in a thread; stopped after the test."""
    worker = Worker(app, hostname=NODE, pool="threads", concurrency=1)
    thread = threading.Thread(target=worker.start, daemon=True)
    thread.start()
    wait_for(lambda: app.control.ping([NODE], timeout=0.2), timeout=10)
    yield worker
    worker.stop()
    thread.join(10)


def test_ping_returns_a_list_of_replies_by_node(app: Celery, node: Worker) -> None:
    assert app.control.ping(timeout=0.5) == [{NODE: {"ok": "pong"}}]
    assert app.control.inspect(timeout=0.5).ping() == {NODE: {"ok": "pong"}}


def test_a_destination_naming_the_node_returns_as_soon_as_it_answered(
    app: Celery, node: Worker
) -> None:
    start = time.monotonic()

    replies = app.control.ping(destination=[NODE], timeout=5.0)

    assert replies == [{NODE: {"ok": "pong"}}]
    assert time.monotonic() - start < 4.0  # every named node answered: no need to wait more


def test_no_reply_is_none_from_inspect_and_empty_from_ping(app: Celery, node: Worker) -> None:
    assert app.control.inspect(destination=["nobody@unit"], timeout=0.3).ping() is None
    assert app.control.ping(destination="nobody@unit", timeout=0.3) == []
    assert app.control.inspect(destination=NODE, timeout=0.5).ping() == {"ok": "pong"}


def test_an_unknown_command_gets_an_error_reply_and_the_node_goes_on(
    app: Celery, node: Worker, caplog: pytest.LogCaptureFixture
) -> None:
    (reply,) = app.control.broadcast("frobnicate", reply=True, timeout=0.5) or []

    assert "unknown command 'frobnicate'" in reply[NODE]["error"]
    assert "Received unknown control command 'frobnicate'" in caplog.text
    assert app.control.ping(timeout=0.5) == [{NODE: {"ok": "pong"}}]


def test_bad_arguments_get_an_error_reply(app: Celery, node: Worker) -> None:
    (missing,) = app.control.broadcast("rate_limit", None, [NODE], reply=True, timeout=5) or []
    (bad_rate,) = (
        app.control.broadcast(
            "rate_limit",
            {"task_name": "rc.add", "rate_limit": "10/x"},
            [NODE],
            reply=True,
            timeout=5.0,
        )
        or []
    )
    (unknown_task,) = app.control.time_limit("nope", 1, 2, [NODE], reply=True, timeout=5.0) or []

    assert "TypeError" in missing[NODE]["error"]
    assert "invalid rate limit string" in bad_rate[NODE]["error"]
    assert unknown_task == {NODE: {"error": "unknown task"}}


def test_malformed_foreign_and_expired_requests_are_ignored(
    app: Celery, node: Worker, caplog: pytest.LogCaptureFixture
) -> None:
    # Given garbage, a record of another version, and an expired ping on the channel
    caplog.set_level(logging.INFO, "chard.worker")
    broker = app.broker
    tail = broker.broadcast_tail(REPLY_CHANNEL)
    broker.broadcast(CONTROL_CHANNEL, b"\x00 garbage")
    broker.broadcast(CONTROL_CHANNEL, b'{"v": 7, "ticket": "t", "command": "ping", "expires": 9e9}')
    stale = ControlRequest.create("ping", reply=True, now=time.time() - 10, timeout=1.0)
    broker.broadcast(CONTROL_CHANNEL, stale.to_payload())

    # Then the node still answers a fresh ping, and answered none of them
    assert app.control.ping(timeout=0.5) == [{NODE: {"ok": "pong"}}]
    entries = broker.broadcast_read(REPLY_CHANNEL, tail, 0)
    replies = [ControlReply.from_payload(payload) for _, payload in entries]
    assert stale.ticket not in {r.ticket for r in replies}
    assert "Ignoring a control message: control request is not JSON" in caplog.text
    assert "version 7" in caplog.text
    assert "Ignoring control command 'ping': it expired" in caplog.text


def test_limits_and_queues_change_on_the_node(app: Celery, node: Worker) -> None:
    inspect = app.control.inspect(destination=[NODE], timeout=5.0)

    assert app.control.rate_limit(
        "rc.add", "10/m", reply=True, timeout=5.0, destination=[NODE]
    ) == [{NODE: {"ok": "new rate limit set successfully"}}]
    assert app.control.time_limit(
        "rc.add", soft=5, hard=10, reply=True, timeout=5.0, destination=[NODE]
    ) == [{NODE: {"ok": "time limits set successfully"}}]
    assert app.control.add_consumer("extra", reply=True, timeout=5.0, destination=[NODE]) == [
        {NODE: {"ok": "add consumer extra"}}
    ]

    assert "rc.add [rate_limit=10/m]" in (inspect.registered() or {})[NODE]
    assert (app.tasks["rc.add"].soft_time_limit, app.tasks["rc.add"].time_limit) == (5, 10)
    assert [q["name"] for q in (inspect.active_queues() or {})[NODE]] == ["celery", "extra"]
    assert node.consumer is not None
    assert node.consumer.queues == ["celery", "extra"]

    app.control.cancel_consumer("extra", reply=True, timeout=5.0, destination=[NODE])
    assert [q["name"] for q in (inspect.active_queues() or {})[NODE]] == ["celery"]


def test_inspect_reports_stats_conf_revoked_and_report(app: Celery, node: Worker) -> None:
    assert app.tasks["rc.add"].delay(1, 2).get(timeout=10) == 3
    app.control.revoke("gone", [NODE], reply=True, timeout=5.0)
    inspect = app.control.inspect(destination=[NODE], timeout=5.0)

    def counted() -> dict[str, Any] | None:
        # The result is stored just before the node counts the task done: wait for the count
        reply = (inspect.stats() or {})[NODE]
        return reply if reply["total"] == {"rc.add": 1} else None

    stats = wait_for(counted, timeout=10)
    assert stats["pool"]["max-concurrency"] == 1
    assert {"pid", "uptime", "broker", "rusage", "prefetch_count"} <= set(stats)
    assert (inspect.revoked() or {})[NODE] == ["gone"]
    assert (inspect.conf() or {})[NODE]["broker_url"].startswith("memory://")
    assert "chard:" in (inspect.report() or {})[NODE]["ok"]
    assert (inspect.active() or {})[NODE] == []
    assert (inspect.query_task("gone") or {})[NODE] == {}


def test_shutdown_stops_the_node(app: Celery, node: Worker) -> None:
    assert app.control.shutdown(reply=True, timeout=5.0, destination=[NODE]) == [
        {NODE: {"ok": "shutting down"}}
    ]

    wait_for(lambda: not app.control.ping(timeout=0.2), timeout=10)
