"""The rpc:// result backend with real workers on RabbitMQ: states come back as messages to
the sending process's own reply queue."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chard import chain, chord, group, states
from tests.helpers import close_amqp_connections, private_vhost, wait_for
from tests.integration.workers import WorkerFactory
from tests.unit.test_plain_send import without_ids

pytestmark = [pytest.mark.slow, pytest.mark.rabbitmq]


@pytest.fixture
def transport() -> Iterator[dict[str, str]]:
    """The test project on its own vhost, with results over rpc:// (Celery's tutorial)."""
    with private_vhost() as url:
        yield {"CHARD_BROKER_URL": url, "CHARD_RESULT_BACKEND": "rpc://"}


def test_results_states_and_progress_come_back_to_the_sender(
    itproj: Any, workers: WorkerFactory, tmp_path: Path
) -> None:
    worker = workers.start("-c", "2")
    assert ".> results:     rpc://" in worker.output()
    from itproj.tasks import add, boom, progress_until

    # A result comes back; a failure propagates, or is returned when asked
    result = add.delay(4, 4)
    assert result.get(timeout=20) == 8
    assert (result.state, result.ready(), result.successful()) == (states.SUCCESS, True, True)
    failed = boom.delay()
    with pytest.raises(ValueError, match="bad input"):
        failed.get(timeout=20)
    assert isinstance(failed.get(timeout=1, propagate=False), ValueError)

    # STARTED (track_started) and a custom state with its meta are seen while it runs
    gate = tmp_path / "gate"
    running = progress_until.delay(str(gate))
    wait_for(lambda: running.state == "PROGRESS", timeout=20)
    assert running.info == {"current": 50, "total": 100}
    assert not running.ready()
    gate.touch()
    assert running.get(timeout=20) == "done"


def test_a_sender_whose_connection_dropped_still_hears_its_results(
    itproj: Any, workers: WorkerFactory, transport: dict[str, str]
) -> None:
    workers.start("-c", "1")
    from itproj.tasks import add

    assert add.delay(1, 1).get(timeout=20) == 2  # the reply consumer runs
    # RabbitMQ closes this process's connections (a restart, an operator, a missed heartbeat)
    assert close_amqp_connections(transport["CHARD_BROKER_URL"], lambda pid: pid == os.getpid())
    # The next wait finds the reply consumer gone with its connection, and consumes again
    assert add.delay(2, 2).get(timeout=20) == 4


def test_a_sender_reads_its_replies_on_the_connection_it_sends_on(
    itproj: Any, workers: WorkerFactory, transport: dict[str, str]
) -> None:
    workers.start("-c", "1")
    from itproj.tasks import add

    # When a task is sent and its result read
    assert add.delay(3, 3).get(timeout=20) == 6

    # Then one connection carried the task, its confirm and its reply (so a reply that comes
    # while delay() waits for the confirm is read in that same wait)
    mine = close_amqp_connections(transport["CHARD_BROKER_URL"], lambda pid: pid == os.getpid())
    assert len(mine) == 1
    assert add.delay(4, 4).get(timeout=20) == 8  # and it is opened again after


def test_chains_and_groups_report_to_the_sender(itproj: Any, workers: WorkerFactory) -> None:
    workers.start("-c", "2")
    from itproj.tasks import add

    # A chain's later steps are sent by the worker, on behalf of the same reply queue
    assert chain(add.s(2, 2), add.s(4), add.s(8)).apply_async().get(timeout=30) == 16
    assert group(add.s(i, i) for i in range(5)).apply_async().get(timeout=30) == [0, 2, 4, 6, 8]


def test_a_chord_fails_at_send_naming_the_backends_that_can(itproj: Any) -> None:
    from itproj.tasks import add

    with pytest.raises(NotImplementedError, match=r"rpc://.*chords.*redis://"):
        chord(add.s(i, i) for i in range(3))(add.s(1))
    assert itproj.broker.queue_size("celery") == 0  # refused before anything was sent


def test_a_plain_delay_names_the_reply_queue_as_the_full_path_does(
    itproj: Any, transport: dict[str, str]
) -> None:
    from itproj.tasks import add

    # When a plain delay() (from its task's cached envelope) and a send with an option
    # (the full path) go out
    plain = add.delay(1, 2)
    full = add.apply_async((1, 2), link_error=None)

    # Then the plain one was written from the cached envelope, both carry this process's
    # reply queue, and they are otherwise the same message
    assert itproj._send_plans[add.name].template is not None
    deliveries: list[Any] = []
    wait_for(lambda: not deliveries.extend(itproj.broker.fetch(["celery"], 2, 1))
             and len(deliveries) == 2)  # fmt: skip
    bodies = {json.loads(d.body)["headers"]["id"]: d.body for d in deliveries}
    for body in bodies.values():
        assert json.loads(body)["properties"]["reply_to"] == itproj.backend.reply_queue
    assert without_ids(bodies[plain.id]) == without_ids(bodies[full.id])
    itproj.broker.ack_many(deliveries)
