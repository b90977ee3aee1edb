"""Real worker processes on RabbitMQ (amqp://), started through the CLI.

Each test gets a vhost of its own (the workers' queues and connections die with it) and a
Redis result backend.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chard import states
from chard.exceptions import TaskRevokedError, WorkerLostError
from tests.helpers import private_vhost, redis_url, wait_for
from tests.integration.workers import WorkerFactory, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.rabbitmq, pytest.mark.redis]


@pytest.fixture
def transport() -> Iterator[dict[str, str]]:
    """The test project on this test's own vhost (overrides the sqlite/redis parameters)."""
    with private_vhost() as url:
        yield {"CHARD_BROKER_URL": url, "CHARD_RESULT_BACKEND": redis_url()}


def test_a_task_runs_and_a_killed_workers_task_runs_again(
    itproj: Any, workers: WorkerFactory, tmp_path: Path
) -> None:
    # Given a worker on amqp:// with the Celery banner
    worker = workers.start("-c", "2")
    assert ".> transport:   amqp://guest:**@" in worker.output()
    from itproj.tasks import add, die_once

    # Then a task runs, and one whose process is SIGKILLed runs again on redelivery
    assert add.delay(4, 4).get(timeout=20) == 8
    assert die_once.delay(str(tmp_path / "died")).get(timeout=30) == "survived"


def test_a_poison_pill_is_dead_lettered_after_bounded_deliveries(
    itproj: Any, workers: WorkerFactory
) -> None:
    workers.start("-c", "2")
    from itproj.tasks import add, die_always

    # When a task kills its process every time, it fails after task_max_deliveries=3
    result = die_always.delay()
    with pytest.raises(WorkerLostError, match="delivered 4 times"):
        result.get(timeout=60)

    # Then it is set aside in RabbitMQ, and the worker goes on
    wait_for(lambda: any(result.id.encode() in d.body for d in itproj.broker.dead_letters()))
    assert add.delay(2, 2).get(timeout=20) == 4


def test_a_countdown_survives_a_worker_restart(itproj: Any, workers: WorkerFactory) -> None:
    # Given a countdown task sent while a worker runs
    first = workers.start("-c", "1")
    from itproj.tasks import add

    result = add.apply_async((20, 22), countdown=3)

    # When that worker stops before it is due, and another starts later
    first.signal(signal.SIGTERM)
    assert first.stop() == 0
    assert itproj.broker.queue_size("celery") == 1  # waiting in RabbitMQ, not in a worker
    workers.start("-c", "1")

    # Then the task runs on the new worker
    assert result.get(timeout=30) == 42


def test_a_queued_task_revoked_behind_a_busy_worker_never_runs(
    itproj: Any, workers: WorkerFactory, tmp_path: Path
) -> None:
    # Given a task queued behind a busy one-slot worker (the revoke log is a stream)
    gate, marker = tmp_path / "gate", tmp_path / "ran"
    worker = workers.start("-c", "1", "--prefetch-multiplier", "1")
    from itproj.tasks import add, block_until, sleep_then_mark

    blocker = block_until.delay(str(gate))
    worker.wait_for_log(f"[{blocker.id}] received")
    victim = sleep_then_mark.delay(0, str(marker))

    # When it is revoked, and the worker's slot frees up once it knows
    victim.revoke()
    worker.wait_for_log(f"Tasks flagged as revoked: {victim.id}")
    gate.touch()

    # Then it ends REVOKED without running, and the worker goes on
    assert blocker.get(timeout=20) is True
    wait_for(lambda: victim.state == states.REVOKED, timeout=20)
    with pytest.raises(TaskRevokedError, match="revoked"):
        victim.get(timeout=1)
    assert add.delay(1, 2).get(timeout=20) == 3
    assert not marker.exists()
    assert itproj.broker.queue_size("celery") == 0


def test_a_worker_rides_out_the_server_closing_its_connections(
    itproj: Any, workers: WorkerFactory, transport: dict[str, str], tmp_path: Path
) -> None:
    # Given a worker whose two slots run tasks that wait for a gate, with more queued
    from itproj.tasks import add, block_until

    gate = tmp_path / "gate"
    worker = workers.start("-c", "2")
    blocked = [block_until.delay(str(gate)) for _ in range(6)]
    wait_for(lambda: worker.output().count("block_until[") >= 2, timeout=30)

    # When RabbitMQ closes every connection of the vhost mid-drain (as a node restart would)
    vhost = transport["CHARD_BROKER_URL"].rsplit("/", 1)[1]
    subprocess.run(
        ["rabbitmqctl", "-q", "close_all_connections", "--vhost", vhost, "test"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    assert not any(r.ready() for r in blocked)  # it was mid-drain
    gate.touch()

    # Then the worker reconnects, and every task completes (the ones running at the close
    # may run twice: their acks went with the connection, at-least-once)
    assert [r.get(timeout=60) for r in blocked] == [True] * 6
    assert add.delay(2, 3).get(timeout=30) == 5
    assert worker.proc.poll() is None


def test_a_poison_pill_in_a_deep_queue_spares_its_batch_mates(
    itproj: Any, workers: WorkerFactory
) -> None:
    # Given a queue of short tasks with a poison pill in the middle, queued before the
    # worker starts, so that each prefork child fetches them in batches
    from itproj.tasks import add, die_always

    before = [add.delay(i, i) for i in range(100)]
    pill = die_always.delay()
    after = [add.delay(i, 1) for i in range(100)]

    # When a worker drains it
    workers.start("-c", "2")

    # Then every other task succeeds and only the pill fails, after bounded deliveries
    assert [r.get(timeout=90) for r in before] == [i + i for i in range(100)]
    assert [r.get(timeout=90) for r in after] == [i + 1 for i in range(100)]
    with pytest.raises(WorkerLostError, match="delivered 4 times"):
        pill.get(timeout=60)
    wait_for(lambda: len(itproj.broker.dead_letters()) >= 1)
    [dead] = itproj.broker.dead_letters()
    assert pill.id.encode() in dead.body


def test_the_cli_purges_lists_and_redrives_on_amqp(
    itproj: Any, transport: dict[str, str], tmp_path: Path
) -> None:
    # Given three waiting tasks (one of them delayed) and nothing consuming
    from itproj.tasks import add

    add.delay(1, 1)
    add.delay(2, 2)
    add.apply_async((3, 3), countdown=60)
    assert itproj.broker.queue_size("celery") == 3

    # When `chard purge` runs, all three go, the delayed one included
    purged = run_cli(["-A", "itproj", "purge", "-f"], transport, tmp_path)
    assert purged.returncode == 0, purged.stderr
    assert "Purged 3 messages from 1 queue(s)." in purged.stdout
    assert itproj.broker.queue_size("celery") == 0

    # And a dead letter is listed and re-driven by the CLI
    add.delay(4, 4)
    (delivery,) = wait_for(lambda: itproj.broker.fetch(["celery"], 1, timeout=0.2))
    delivery.dead_letter("set aside by the test")
    listed = run_cli(["-A", "itproj", "dead-letters", "list"], transport, tmp_path)
    assert "set aside by the test" in listed.stdout, listed.stdout + listed.stderr
    redriven = run_cli(["-A", "itproj", "dead-letters", "redrive", "--all"], transport, tmp_path)
    assert redriven.returncode == 0, redriven.stderr
    assert itproj.broker.queue_size("celery") == 1
    assert itproj.broker.dead_letters() == []


def test_a_quorum_queues_delivery_limit_sets_a_poison_pill_aside_sooner(
    itproj: Any, workers: WorkerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the default queue declared as a quorum queue with x-delivery-limit 1 (two
    # deliveries), below task_max_deliveries=3, by this client and the worker alike
    from itproj.celery import quorum_queues

    monkeypatch.setitem(itproj.conf, "task_queues", quorum_queues(1))
    itproj.close()  # reopen the broker with the declaration
    workers.start("-c", "2", extra_env={"ITPROJ_DELIVERY_LIMIT": "1"})
    from itproj.tasks import add, die_always

    # When a task kills its process every time, it fails after the queue's limit
    result = die_always.delay()
    with pytest.raises(WorkerLostError, match=r"delivered 3 times .*x-delivery-limit=1"):
        result.get(timeout=60)
    assert add.delay(2, 2).get(timeout=20) == 4


def test_inspect_scheduled_lists_what_waits_in_rabbitmqs_delay_queues(
    itproj: Any, workers: WorkerFactory, transport: dict[str, str], tmp_path: Path
) -> None:
    # Given a worker, and a countdown task waiting in the broker (not in the worker)
    workers.start("-c", "1", "-n", "sched@%h")
    from itproj.tasks import add

    later = add.apply_async((4, 4), countdown=600)

    # When `chard inspect scheduled` asks the node
    def listed() -> list[Any]:
        done = run_cli(["-A", "itproj", "inspect", "scheduled", "-t", "10", "--json"],
                       transport, tmp_path)  # fmt: skip
        assert done.returncode == 0, done.stderr
        replies = json.loads(done.stdout)
        return [entry for reply in replies.values() for entry in reply]

    # Then it answers with the task and its due time, and listing took nothing
    (entry,) = wait_for(listed, timeout=30)
    assert entry["request"]["id"] == later.id
    assert entry["eta"] > "2000"  # ISO 8601
    assert itproj.broker.queue_size("celery") == 1
