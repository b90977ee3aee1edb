"""Connection loss on RabbitMQ: the server closes a worker's connections mid-drain, and a
client's publish waits out a refusal per task_publish_retry_policy.

Connections are found by the name each chard process gives its own (``chard <host>:<pid>``)
and closed with ``rabbitmqctl close_connection``, as an operator or a node restart would.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chard import Celery
from tests.helpers import close_amqp_connections, private_vhost, redis_url, wait_for
from tests.integration.workers import WorkerFactory

pytestmark = [pytest.mark.slow, pytest.mark.rabbitmq]


@pytest.fixture
def transport() -> Iterator[dict[str, str]]:
    """The test project on a vhost of its own, with a Redis result backend."""
    with private_vhost() as url:
        yield {"CHARD_BROKER_URL": url, "CHARD_RESULT_BACKEND": redis_url()}


@pytest.mark.redis
def test_a_worker_whose_connections_are_closed_mid_drain_runs_every_task(
    itproj: Any, workers: WorkerFactory, transport: dict[str, str], tmp_path: Path
) -> None:
    # Given a worker (two prefork children) whose slots and prefetch windows are taken by
    # tasks that wait for a gate, with 300 short tasks queued behind them
    from itproj.tasks import add, block_until, sleep_then_mark

    gate, marks = tmp_path / "gate", tmp_path / "runs"
    blockers = [block_until.delay(str(gate)) for _ in range(24)]
    sent = [sleep_then_mark.delay(0.01, str(marks)) for _ in range(300)]
    worker = workers.start("-c", "2")
    wait_for(lambda: worker.output().count("block_until[") >= 2, timeout=60)

    # When RabbitMQ closes every connection of the worker's processes (not this client's)
    closed = close_amqp_connections(transport["CHARD_BROKER_URL"], lambda pid: pid != os.getpid())
    assert len(closed) >= 2, closed  # at least each child's
    assert not any(r.ready() for r in sent)  # mid-drain: fetched ahead or still queued
    gate.touch()

    # Then every task ran at least once and none was lost (the ones held at the close may
    # run twice: their acks went with the connection), and the worker goes on
    assert [r.get(timeout=120) for r in blockers] == [True] * 24
    assert [r.get(timeout=120) for r in sent] == [0.01] * 300
    assert len(marks.read_text().splitlines()) >= 300
    assert add.delay(2, 3).get(timeout=30) == 5
    assert worker.proc.poll() is None
    assert "Lost the connection to RabbitMQ" in worker.output()
    assert itproj.broker.queue_size("celery") == 0


def test_a_publish_waits_out_a_refusing_broker_per_the_calls_retry_policy(
    transport: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    # Given a client that sent once (connected, queue declared)
    url = transport["CHARD_BROKER_URL"]
    vhost = url.rsplit("/", 1)[1]
    app = Celery("reconnect", broker=url, set_as_current=False)
    app.conf.task_publish_retry_policy = {"max_retries": 0}  # the call gives its own
    patient = {"max_retries": 200, "interval_start": 0.1, "interval_step": 0.1, "interval_max": 0.3}

    @app.task(name="reconnect.add")
    def add(x: int, y: int) -> int:
        return x + y

    try:
        add.delay(1, 1)

        # When RabbitMQ closes its connection and refuses new ones for a while
        rabbitmqctl("clear_permissions", "-p", vhost, "guest")
        assert close_amqp_connections(url, lambda pid: pid == os.getpid())
        caplog.set_level(logging.WARNING, logger="chard.sending")
        sending = threading.Thread(
            target=add.apply_async, args=((2, 2),), kwargs={"retry_policy": patient}
        )
        sending.start()
        wait_for(lambda: "Publish failed" in caplog.text, timeout=60)
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")

        # Then the publish goes through once it may, and nothing is lost
        sending.join(timeout=60)
        assert not sending.is_alive()
        assert app.broker.queue_size("celery") == 2
        assert "retry 1/200" in caplog.text
    finally:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        app.close()


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)
