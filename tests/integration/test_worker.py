"""End to end with real worker processes started through the CLI, on SQLite and Redis."""

from __future__ import annotations

import base64
import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from chard import states
from chard.brokers.base import OutgoingMessage
from chard.exceptions import (
    DecodeError,
    NotRegistered,
    RemoteTaskError,
    TaskRevokedError,
    TimeLimitExceeded,
    WorkerLostError,
)
from chard.protocol.message import TaskMessage
from tests.helpers import wait_for
from tests.integration.workers import WorkerFactory

pytestmark = pytest.mark.slow


def test_classic_project_round_trip(itproj: Any, workers: WorkerFactory) -> None:
    # Given a worker started as `chard -A itproj worker -l INFO -c 2`
    worker = workers.start("-c", "2")
    from itproj.tasks import add

    # When a client sends add(4, 4)
    result = add.delay(4, 4)

    # Then the result comes back and the log has Celery's line shapes
    assert result.get(timeout=10) == 8
    assert result.successful()
    assert result.state == states.SUCCESS
    worker.wait_for_log(f"Task itproj.tasks.add[{result.id}] succeeded in")
    assert f"Task itproj.tasks.add[{result.id}] received" in worker.output()


def test_request_context_and_async_task(itproj: Any, workers: WorkerFactory) -> None:
    workers.start("-c", "2", "-n", "node1@%h")
    from itproj.tasks import async_add, whoami

    info = whoami.apply_async(queue="celery").get(timeout=10)
    assert info["retries"] == 0
    assert info["is_eager"] is False
    assert info["hostname"].startswith("node1@")
    assert info["queue"] == "celery"
    assert info["root_id"] == info["id"]
    assert async_add.delay(2, 3).get(timeout=10) == 5


def test_failures_carry_type_and_traceback(itproj: Any, workers: WorkerFactory) -> None:
    workers.start("-c", "1")
    from itproj.tasks import boom, custom_boom

    result = boom.delay()
    with pytest.raises(ValueError, match="bad input"):
        result.get(timeout=10)
    assert result.failed()
    assert "ValueError: bad input" in (result.traceback or "")
    assert isinstance(result.get(timeout=1, propagate=False), ValueError)
    # itproj.tasks is imported here, so its exception type is rebuilt as itself
    from itproj.tasks import CustomError

    with pytest.raises(CustomError):
        custom_boom.delay().get(timeout=10)


def test_unimportable_exception_type_is_a_clear_remote_error(
    itproj: Any, workers: WorkerFactory
) -> None:
    workers.start("-c", "1")
    backend = itproj.backend
    backend.store_result(
        "remote-1",
        {"exc_type": "Gone", "exc_message": ["vanished"], "exc_module": "nowhere.mod"},
        states.FAILURE,
        "Traceback: remote",
    )
    with pytest.raises(RemoteTaskError, match=r"nowhere\.mod\.Gone: vanished") as info:
        itproj.AsyncResult("remote-1").get(timeout=1)
    assert info.value.remote_traceback == "Traceback: remote"


def test_retry_and_autoretry(itproj: Any, workers: WorkerFactory, tmp_path: Path) -> None:
    workers.start("-c", "2")
    from itproj.tasks import always_keyerror, flaky

    assert flaky.delay(str(tmp_path / "m"), 2).get(timeout=15) == "ok after 2 retries"
    result = always_keyerror.delay()
    with pytest.raises(KeyError):
        result.get(timeout=15)


def test_countdown_does_not_block_other_work(itproj: Any, workers: WorkerFactory) -> None:
    workers.start("-c", "1")
    from itproj.tasks import add

    before = time.time()  # wall clock: the ETA and date_done are wall-clock times
    later = add.apply_async((1, 1), countdown=2)
    now = add.delay(2, 2)
    assert now.get(timeout=10) == 4
    assert later.get(timeout=10) == 2
    # the task sent after the countdown one ran first, and the countdown one not before its ETA
    assert now.date_done is not None
    assert later.date_done is not None
    assert now.date_done < later.date_done, "a countdown task held up the queue"
    assert later.date_done.timestamp() >= before + 2


def test_expired_task_is_revoked_not_run(itproj: Any, workers: WorkerFactory) -> None:
    from itproj.tasks import add

    # Given a message that expires before any worker is up
    result = add.apply_async((1, 2), expires=0.2)
    time.sleep(0.3)  # the expiry itself is under test here, not a synchronisation
    workers.start("-c", "1")
    wait_for(lambda: result.state == states.REVOKED, timeout=10)
    assert isinstance(result.get(propagate=False, timeout=1), TaskRevokedError)


def test_track_started_and_custom_state(itproj: Any, workers: WorkerFactory) -> None:
    workers.start("-c", "2")
    from itproj.tasks import progress, slow

    result = slow.delay(1.0)
    wait_for(lambda: result.state == states.STARTED, timeout=10)
    assert result.get(timeout=10) == 1.0
    prog = progress.delay()
    wait_for(lambda: prog.state == "PROGRESS", timeout=10)
    assert prog.info == {"current": 50, "total": 100}
    assert prog.get(timeout=10) == "done"


def test_started_is_visible_for_tasks_run_in_a_batch(itproj: Any, workers: WorkerFactory) -> None:
    # Given tracked tasks queued before the worker starts (so they reach it in batches)
    from itproj.tasks import slow

    results = [slow.delay(0.3) for _ in range(8)]

    # When one worker process runs them one after another
    workers.start("-c", "1")

    # Then each shows STARTED while it runs (its state is not held for the batch's end)
    for result in results[:3]:
        wait_for(lambda r=result: r.state == states.STARTED, timeout=10)
        assert result.get(timeout=10) == 0.3


def test_unknown_id_is_pending(itproj: Any) -> None:
    result = itproj.AsyncResult("never-sent")
    assert result.state == states.PENDING
    assert not result.ready()
    assert not result.exists()


def test_soft_and_hard_time_limits(itproj: Any, workers: WorkerFactory) -> None:
    worker = workers.start("-c", "2")
    from itproj.tasks import add, hang, soft_limited

    assert soft_limited.delay().get(timeout=10) == "soft limit observed"
    result = hang.delay()
    with pytest.raises(TimeLimitExceeded):
        result.get(timeout=15)
    worker.wait_for_log("Hard time limit")
    assert add.delay(1, 1).get(timeout=10) == 2  # the pool replaced the killed child


def test_child_death_is_redelivered_then_succeeds(
    itproj: Any, workers: WorkerFactory, tmp_path: Path
) -> None:
    workers.start("-c", "2")
    from itproj.tasks import die_once

    assert die_once.delay(str(tmp_path / "died")).get(timeout=20) == "survived"


# A task id longer than a slot's record: the supervisor still knows which message it was.
@pytest.mark.parametrize("task_id", [None, "long-" + "x" * 600], ids=["plain-id", "long-id"])
def test_poison_pill_fails_after_bounded_deliveries(
    itproj: Any, workers: WorkerFactory, task_id: str | None
) -> None:
    worker = workers.start("-c", "2")
    from itproj.tasks import add, die_always

    # When a task kills its own process every time
    result = die_always.apply_async(task_id=task_id)

    # Then it ends FAILURE (WorkerLostError) after task_max_deliveries=3, set aside
    with pytest.raises(WorkerLostError, match="delivered 4 times"):
        result.get(timeout=30)
    assert worker.output().count(f"while running itproj.tasks.die_always[{result.id}]") == 3
    wait_for(lambda: any(result.id.encode() in d.body for d in itproj.broker.dead_letters()))
    assert add.delay(2, 2).get(timeout=10) == 4


def test_poison_pill_in_a_deep_queue_spares_its_batch_mates(
    itproj: Any, workers: WorkerFactory
) -> None:
    # Given a queue of short tasks with a poison pill in the middle, queued before the
    # worker starts, so that the prefork pool gets them in batches
    from itproj.tasks import add, die_always

    before = [add.delay(i, i) for i in range(100)]
    pill = die_always.delay()
    after = [add.delay(i, 1) for i in range(100)]

    # When a worker drains it
    workers.start("-c", "2")

    # Then every other task succeeds, the pill alone fails after bounded deliveries, and
    # only the pill is set aside (a death is counted against the message that was running)
    assert [r.get(timeout=60) for r in before] == [i + i for i in range(100)]
    assert [r.get(timeout=60) for r in after] == [i + 1 for i in range(100)]
    with pytest.raises(WorkerLostError, match="delivered 4 times"):
        pill.get(timeout=60)
    wait_for(lambda: len(itproj.broker.dead_letters()) >= 1)
    [dead] = itproj.broker.dead_letters()
    assert pill.id.encode() in dead.body


def test_large_batches_with_a_deep_prefetch(itproj: Any, workers: WorkerFactory) -> None:
    # Given a wide prefetch window, so batches outgrow what may queue behind a busy child
    from itproj.tasks import add

    results = [add.delay(i, 1) for i in range(600)]

    # When a worker drains them
    worker = workers.start("-c", "2", "--prefetch-multiplier", "32")

    # Then all complete and the worker stays up
    assert [r.get(timeout=60) for r in results] == [i + 1 for i in range(600)]
    assert worker.proc.poll() is None


def test_acks_early_task_lost_with_its_process(itproj: Any, workers: WorkerFactory) -> None:
    workers.start("-c", "1")
    from itproj.tasks import early_ack_die

    with pytest.raises(WorkerLostError):
        early_ack_die.delay().get(timeout=15)


def test_sigkilled_worker_loses_nothing(
    itproj: Any, workers: WorkerFactory, tmp_path: Path
) -> None:
    # Given a worker holding a running task and prefetched ones
    first = workers.start("-c", "2")
    from itproj.tasks import sleep_then_mark

    marker = tmp_path / "runs"
    results = [sleep_then_mark.delay(0.5, str(marker)) for _ in range(8)]
    wait_for(lambda: "received" in first.output(), timeout=10)

    # When the whole node is SIGKILLed and another worker starts
    first.kill_group()
    workers.start("-c", "2")

    # Then every task completes (leases lapse within seconds; at-least-once)
    for result in results:
        assert result.get(timeout=40) == 0.5
    assert len(marker.read_text().splitlines()) >= 8


def test_slow_task_runs_once_on_a_healthy_worker(
    itproj: Any, workers: WorkerFactory, tmp_path: Path
) -> None:
    # A task longer than several lease periods (lease 10 s, heartbeat keeps it) runs once
    worker = workers.start("-c", "2", extra_env={})
    from itproj.tasks import sleep_then_mark

    marker = tmp_path / "once"
    result = sleep_then_mark.delay(12, str(marker))
    assert result.get(timeout=40) == 12
    assert len(marker.read_text().splitlines()) == 1
    assert worker.output().count(f"[{result.id}] received") == 1


def test_warm_shutdown_finishes_running_and_returns_unstarted(
    itproj: Any, workers: WorkerFactory, tmp_path: Path
) -> None:
    worker = workers.start("-c", "1", "--prefetch-multiplier", "4")
    from itproj.tasks import sleep_then_mark

    marker = tmp_path / "warm"
    running = sleep_then_mark.delay(1.5, str(marker))
    queued = [sleep_then_mark.delay(0.1, str(marker)) for _ in range(3)]
    wait_for(lambda: running.id in worker.output() and "received" in worker.output(), timeout=10)

    # When SIGTERM arrives mid-task
    worker.signal(signal.SIGTERM)
    assert worker.proc.wait(timeout=20) == 0

    # Then the running task finished, and the unstarted ones run on the next worker
    assert running.get(timeout=1) == 1.5
    workers.start("-c", "1")
    assert [r.get(timeout=20) for r in queued] == [0.1] * 3


def test_unregistered_task_fails_and_worker_goes_on(itproj: Any, workers: WorkerFactory) -> None:
    worker = workers.start("-c", "1")
    result = itproj.send_task("itproj.tasks.nope", (1,))
    with pytest.raises(NotRegistered, match="not registered"):
        result.get(timeout=10)
    worker.wait_for_log("Received unregistered task itproj.tasks.nope")
    wait_for(lambda: any(b"itproj.tasks.nope" in d.body for d in itproj.broker.dead_letters()))
    from itproj.tasks import add

    assert add.delay(1, 2).get(timeout=10) == 3


def test_malformed_message_is_dead_lettered(itproj: Any, workers: WorkerFactory) -> None:
    worker = workers.start("-c", "1")
    itproj.broker.publish(OutgoingMessage("celery", b"\x00not json at all"))
    worker.wait_for_log("Moved an undecodable message to the dead-letter store")
    wait_for(lambda: any(d.body == b"\x00not json at all" for d in itproj.broker.dead_letters()))
    from itproj.tasks import add

    assert add.delay(5, 5).get(timeout=10) == 10


def test_disallowed_content_type_is_refused(itproj: Any, workers: WorkerFactory) -> None:
    worker = workers.start("-c", "1")
    # Given a pickle-encoded message (accept_content is json only)
    good = TaskMessage("itproj.tasks.add", "pickled-1", (1, 2)).to_wire()
    envelope = json.loads(good)
    import pickle

    envelope["content-type"] = "application/x-python-serialize"
    envelope["body"] = base64.b64encode(pickle.dumps([[1, 2], {}, {}])).decode()
    itproj.broker.publish(OutgoingMessage("celery", json.dumps(envelope).encode()))

    # Then it is set aside with a log line, never executed (never unpickled), and its
    # result says why instead of staying PENDING (issue 10)
    worker.wait_for_log("refusing to decode content type")
    with pytest.raises(DecodeError, match="content type"):
        itproj.AsyncResult("pickled-1").get(timeout=10)
    assert "pickled-1] succeeded" not in worker.output()


def test_queues_option_consumes_only_named_queues(itproj: Any, workers: WorkerFactory) -> None:
    workers.start("-c", "1", "-Q", "alpha,beta")
    from itproj.tasks import add

    assert add.apply_async((1, 1), queue="beta").get(timeout=10) == 2
    other = add.apply_async((2, 2), queue="gamma")
    with pytest.raises(TimeoutError):
        other.get(timeout=1.0)
    assert itproj.broker.queue_size("gamma") == 1


def test_group_sigterm_is_a_warm_shutdown(
    itproj: Any, workers: WorkerFactory, tmp_path: Path
) -> None:
    # Given a running task, when SIGTERM reaches the whole process group (docker stop)
    worker = workers.start("-c", "1")
    from itproj.tasks import sleep_then_mark

    result = sleep_then_mark.delay(1.5, str(tmp_path / "group"))
    worker.wait_for_log(f"[{result.id}] received")
    import os

    os.killpg(worker.pid, signal.SIGTERM)

    # Then the child was not killed by it: the task finished and the worker exited cleanly
    assert worker.proc.wait(timeout=20) == 0
    assert result.get(timeout=1) == 1.5
