"""Revocation end to end: real ``chard -A itproj worker`` processes, on SQLite and Redis.

Each test proves a revoked body never ran with a marker file it would have written
(``sleep_then_mark`` appends a line per run). A busy worker is one running
``block_until(gate)``: the test decides when its only pool slot frees up, after
the worker has logged that it took the revocation in.
"""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from chard import group, states
from chard.exceptions import TaskRevokedError
from tests.helpers import wait_for
from tests.integration.workers import WorkerFactory, WorkerProcess

pytestmark = pytest.mark.slow


def is_revoked(result: Any) -> bool:
    return bool(result.state == states.REVOKED)


def consuming(workers: WorkerFactory, *args: str, queue: str = "celery") -> WorkerProcess:
    """Start a worker and return once it runs a task from ``queue``.

    "ready." is logged before the consumer reads the revoke log; a task run proves the
    reader caught up, so a revocation sent from now on is announced as it arrives.
    """
    from itproj.tasks import add

    worker = workers.start("-c", "1", "-Q", queue, *args)
    assert add.apply_async((0, 0), queue=queue).get(timeout=10) == 0
    return worker


def busy(workers: WorkerFactory, gate: Path, *args: str) -> tuple[WorkerProcess, Any]:
    """Start a one-slot worker (``args`` added) and occupy its slot until ``gate`` exists."""
    from itproj.tasks import block_until

    worker = workers.start("-c", "1", *args)
    blocker = block_until.delay(str(gate))
    worker.wait_for_log(f"[{blocker.id}] received")  # after the revoke log was read
    return worker, blocker


def held_messages(app: Any) -> int:
    """Count the messages the broker still holds, leased ones included (0: all acked)."""
    url = app.broker_url
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite:///")
        with sqlite3.connect(path) as conn:
            return int(conn.execute("SELECT count(*) FROM chard_messages").fetchone()[0])
    broker = app.broker  # kombu's ready list plus chard's leases (see chard.brokers.redis)
    return int(broker._client.llen(broker._key("celery"))) + int(
        broker._client.hlen(broker._key("chard.held"))
    )


def test_a_queued_task_revoked_behind_a_busy_worker_never_runs(
    itproj: Any, workers: WorkerFactory, tmp_path: Path
) -> None:
    # Given a task queued behind a busy one-slot worker
    gate, marker = tmp_path / "gate", tmp_path / "ran"
    worker, blocker = busy(workers, gate, "--prefetch-multiplier", "1")
    from itproj.tasks import add, sleep_then_mark

    victim = sleep_then_mark.delay(0, str(marker))

    # When it is revoked, and the worker's slot frees up once it knows
    victim.revoke()
    worker.wait_for_log(f"Tasks flagged as revoked: {victim.id}")
    gate.touch()

    # Then it ends REVOKED without running, and the worker goes on
    assert blocker.get(timeout=10) is True
    wait_for(lambda: is_revoked(victim), timeout=10)
    with pytest.raises(TaskRevokedError, match="revoked"):
        victim.get(timeout=1)
    worker.wait_for_log(f"Discarding revoked task itproj.tasks.sleep_then_mark[{victim.id}]")
    assert add.delay(1, 2).get(timeout=10) == 3
    assert not marker.exists()
    wait_for(lambda: held_messages(itproj) == 0, timeout=5)  # acked, not left leased


def test_a_revoked_countdown_task_is_discarded_when_due(
    itproj: Any, workers: WorkerFactory, tmp_path: Path
) -> None:
    # Given a task due in 1.5 s, held by the broker
    worker = consuming(workers)
    from itproj.tasks import sleep_then_mark

    marker = tmp_path / "ran"
    sent = time.monotonic()
    victim = sleep_then_mark.apply_async((0, str(marker)), countdown=1.5)

    # When it is revoked before it is due
    victim.revoke()
    worker.wait_for_log(f"Tasks flagged as revoked: {victim.id}")

    # Then the worker discards it when it falls due and is fetched
    wait_for(lambda: is_revoked(victim), timeout=15)
    assert time.monotonic() - sent >= 1.4, "discarded before it was due: the broker held it"
    worker.wait_for_log(f"Discarding revoked task itproj.tasks.sleep_then_mark[{victim.id}]")
    assert not marker.exists()


def test_a_revocation_sent_before_the_worker_starts_is_honoured(
    itproj: Any, workers: WorkerFactory, tmp_path: Path
) -> None:
    # Given a queued task revoked while no worker runs (Celery's workers would run it)
    from itproj.tasks import add, sleep_then_mark

    marker = tmp_path / "ran"
    victim = sleep_then_mark.delay(0, str(marker))
    victim.revoke()
    other = add.delay(2, 2)

    # When a worker starts afterwards
    worker = workers.start("-c", "1")

    # Then it read the revocation from the broker, discards the task and runs the rest
    assert other.get(timeout=10) == 4
    wait_for(lambda: is_revoked(victim), timeout=10)
    assert "1 revoked task id(s) in force" in worker.output()
    assert not marker.exists()


def test_a_revocation_outlives_the_worker_that_saw_it(
    itproj: Any, workers: WorkerFactory, tmp_path: Path
) -> None:
    # Given a worker (on another queue, so it cannot take the task) that saw a revocation
    first = consuming(workers, queue="elsewhere")
    from itproj.tasks import sleep_then_mark

    marker = tmp_path / "ran"
    victim = sleep_then_mark.delay(0, str(marker))
    victim.revoke()
    first.wait_for_log(f"Tasks flagged as revoked: {victim.id}")

    # When that worker is gone and another one, on the task's queue, starts
    assert first.stop() == 0
    second = workers.start("-c", "1")

    # Then the new worker honours it: the broker kept it, not the worker's memory
    wait_for(lambda: is_revoked(victim), timeout=15)
    second.wait_for_log(f"Discarding revoked task itproj.tasks.sleep_then_mark[{victim.id}]")
    assert not marker.exists()


def test_group_revoke_behind_a_busy_worker_revokes_every_member(
    itproj: Any, workers: WorkerFactory, tmp_path: Path
) -> None:
    # Given a group of five queued behind a busy worker
    gate, marker = tmp_path / "gate", tmp_path / "ran"
    worker, blocker = busy(workers, gate, "--prefetch-multiplier", "1")
    from itproj.tasks import sleep_then_mark

    result = group(sleep_then_mark.s(0, str(marker)) for _ in range(5))()

    # When the group result is revoked (one revocation for all), then the slot frees up
    result.revoke()
    worker.wait_for_log("Tasks flagged as revoked: " + ", ".join(r.id for r in result))
    gate.touch()

    # Then every member ends REVOKED, and none ran
    assert blocker.get(timeout=10) is True
    wait_for(lambda: all(is_revoked(r) for r in result), timeout=15)
    with pytest.raises(TaskRevokedError):
        result.get(timeout=1)
    assert not marker.exists()


def test_terminate_kills_a_running_task_which_ends_revoked_and_is_not_redelivered(
    itproj: Any, workers: WorkerFactory, tmp_path: Path
) -> None:
    # Given a long task running in a prefork child
    worker = workers.start("-c", "1", "-P", "prefork")
    from itproj.tasks import add, announce_then_sleep

    progress = tmp_path / "progress"
    long = announce_then_sleep.delay(str(progress), 30)
    # Its body has started: "received" alone is not enough, since a revocation that
    # arrives before the body starts discards it ("revoked") instead of terminating it.
    # The file exists from open() on, before "started" is written: wait for the line itself.
    wait_for(lambda: progress.exists() and progress.read_text() == "started\n", timeout=15)

    # When it is revoked with terminate=True
    asked = time.monotonic()
    long.revoke(terminate=True)

    # Then it ends REVOKED ("terminated") quickly, the body never finished ...
    wait_for(lambda: is_revoked(long), timeout=10)
    took = time.monotonic() - asked
    assert took < 3.0, f"terminate took {took:.2f}s"
    with pytest.raises(TaskRevokedError, match="terminated"):
        long.get(timeout=1)
    worker.wait_for_log(f"Task itproj.tasks.announce_then_sleep[{long.id}] terminated (REVOKED)")

    # ... the worker serves the next task (the pool replaced the child) ...
    assert add.delay(2, 3).get(timeout=10) == 5

    # ... and the message was acked, neither redelivered nor republished as a lost child
    wait_for(lambda: held_messages(itproj) == 0, timeout=5)
    log = worker.output()
    assert log.count(f"[{long.id}] received") == 1
    assert f"Discarding revoked task itproj.tasks.announce_then_sleep[{long.id}]" not in log
    assert "while running itproj.tasks.announce_then_sleep" not in log  # not reported lost
    assert progress.read_text() == "started\n"  # it never finished
    print(f"revoke(terminate=True) took effect in {took * 1000:.0f} ms")


# -- with Celery's default prefetch a busy child holds work ahead, run later as a batch -----


def test_tasks_revoked_after_a_busy_child_leased_them_never_run(
    itproj: Any, workers: WorkerFactory, tmp_path: Path
) -> None:
    # Given a one-slot worker (prefetch multiplier 4) busy, and three tasks it leased
    # ahead: the child consumes them as one batch once its running task ends
    gate, marker = tmp_path / "gate", tmp_path / "ran"
    worker, blocker = busy(workers, gate)
    from itproj.tasks import add, sleep_then_mark

    victims = group(sleep_then_mark.s(0, str(marker)) for _ in range(3))()
    wait_for(lambda: itproj.broker.queue_size("celery") == 0, timeout=10)  # all leased

    # When they are revoked, and the child then gets to them
    victims.revoke()
    worker.wait_for_log("Tasks flagged as revoked: " + ", ".join(v.id for v in victims))
    gate.touch()

    # Then the child discards each instead of running it
    assert blocker.get(timeout=10) is True
    wait_for(lambda: all(is_revoked(v) for v in victims), timeout=15)
    assert not marker.exists()
    assert add.delay(1, 1).get(timeout=10) == 2
    wait_for(lambda: held_messages(itproj) == 0, timeout=5)


def test_terminate_ends_the_running_message_of_a_batch_and_reruns_the_rest(
    itproj: Any, workers: WorkerFactory, tmp_path: Path
) -> None:
    # Given a busy one-slot worker, and a long task and a short one it leased ahead:
    # the child runs them as one batch once its running task ends
    gate, progress = tmp_path / "gate", tmp_path / "progress"
    worker, _ = busy(workers, gate)
    from itproj.tasks import add, announce_then_sleep

    long, short = group(announce_then_sleep.s(str(progress), 30), add.s(2, 2))()
    wait_for(lambda: itproj.broker.queue_size("celery") == 0, timeout=10)  # both leased

    # When the batch starts, and its running (long) task is revoked with terminate
    gate.touch()
    wait_for(progress.exists, timeout=10)
    long.revoke(terminate=True)

    # Then only that task ends REVOKED (terminated), and the batch's other one runs again
    wait_for(lambda: is_revoked(long), timeout=10)
    with pytest.raises(TaskRevokedError, match="terminated"):
        long.get(timeout=1)
    assert short.get(timeout=15) == 4
    assert progress.read_text() == "started\n"
    log = worker.output()
    assert f"add[{short.id}] received" in log  # admitted with the long one: one batch
    assert f"running {long.id}" in log  # the supervisor killed the child running it
    assert re.search(r"Returned \d message\(s\) held by worker process", log)  # short
    assert f"Task itproj.tasks.announce_then_sleep[{long.id}] terminated (REVOKED)" in log
    wait_for(lambda: held_messages(itproj) == 0, timeout=5)
