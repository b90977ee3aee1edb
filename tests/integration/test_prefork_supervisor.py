"""The prefork node through real CLI workers: children that consume, a parent that supervises.

What the parent alone can do, tested end to end on SQLite and Redis: take over a dead
child's leases at once (not after ``lease_timeout``), replace children (crash,
``--max-tasks-per-child``), and let children outlive neither a warm stop nor the
parent itself. Time limits, poison pills, terminate and warm/cold stops are in
test_worker.py and test_revoke_worker.py.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

from chard.brokers.base import OutgoingMessage
from chard.protocol.ids import new_id
from chard.protocol.message import TaskMessage, with_header
from tests.helpers import wait_for
from tests.integration.workers import WorkerFactory, iter_lines

#: The brokers' default lease: what recovery would take without the take-over.
LEASE_TIMEOUT = 10.0


def children_of(pid: int) -> set[int]:
    """Return the ids of the live child processes of ``pid`` (from /proc)."""
    out = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.add(int(entry))
    return out


def test_a_dead_childs_prefetched_tasks_run_again_at_once(
    itproj: Any, workers: WorkerFactory, tmp_path: Path
) -> None:
    # Given one child holding a running task and prefetched ones behind it
    worker = workers.start("-c", "1", "--prefetch-multiplier", "8")
    from itproj.tasks import add, announce_then_sleep

    started = tmp_path / "started"
    running = announce_then_sleep.delay(str(started), 30)
    queued = [add.delay(i, i) for i in range(5)]
    wait_for(lambda: started.exists(), timeout=10)
    wait_for(lambda: itproj.broker.queue_size("celery") == 0, timeout=10)  # all leased
    (child,) = children_of(worker.pid)

    # When the child is SIGKILLed
    killed_at = time.monotonic()
    os.kill(child, signal.SIGKILL)

    # Then its prefetched tasks run in the replacement well within the lease they held
    assert [r.get(timeout=LEASE_TIMEOUT / 2) for r in queued] == [2 * i for i in range(5)]
    assert time.monotonic() - killed_at < LEASE_TIMEOUT / 2
    # And the running one is redelivered with its death counted (it runs again)
    worker.wait_for_log(f"while running itproj.tasks.announce_then_sleep[{running.id}]")
    wait_for(lambda: len(children_of(worker.pid) - {child}) == 1, timeout=10)
    assert "Returned 5 message(s) held by worker process" in worker.output()


def test_children_are_recycled_after_max_tasks(itproj: Any, workers: WorkerFactory) -> None:
    # Given a worker whose children run at most 3 tasks each
    workers.start("-c", "1", "--max-tasks-per-child", "3", "--prefetch-multiplier", "1")
    from itproj.tasks import pid

    # When 9 tasks run one after another
    pids = [pid.delay().get(timeout=10) for _ in range(9)]

    # Then three processes ran three tasks each, in turn
    assert len(set(pids)) == 3
    assert [pids[i] for i in (0, 3, 6)] == [pids[i] for i in (2, 5, 8)]


def test_children_stop_by_themselves_when_the_parent_dies(
    itproj: Any, workers: WorkerFactory, tmp_path: Path
) -> None:
    # Given a worker whose child runs a task
    worker = workers.start("-c", "1")
    from itproj.tasks import announce_then_sleep

    path = tmp_path / "progress"
    announce_then_sleep.delay(str(path), 1.0)
    wait_for(lambda: path.exists(), timeout=10)
    (child,) = children_of(worker.pid)

    # When the parent alone is SIGKILLed
    os.kill(worker.pid, signal.SIGKILL)
    worker.proc.wait(timeout=10)

    # Then the child finishes its task and exits, rather than consuming as an orphan
    wait_for(lambda: not Path(f"/proc/{child}").exists(), timeout=15)
    assert path.read_text() == "started\nfinished\n"


def test_an_idle_child_killed_from_outside_is_replaced(itproj: Any, workers: WorkerFactory) -> None:
    worker = workers.start("-c", "2")
    from itproj.tasks import add

    wait_for(lambda: len(children_of(worker.pid)) == 2, timeout=10)
    victim = min(children_of(worker.pid))

    os.kill(victim, signal.SIGKILL)

    wait_for(lambda: len(children_of(worker.pid) - {victim}) == 2, timeout=10)
    assert [add.delay(i, 1).get(timeout=10) for i in range(4)] == [1, 2, 3, 4]


def test_terminate_with_a_signal_the_child_does_not_handle_ends_the_task_revoked(
    itproj: Any, workers: WorkerFactory, tmp_path: Path
) -> None:
    # Given a task running in a child
    worker = workers.start("-c", "1")
    from itproj.tasks import add, announce_then_sleep

    progress = tmp_path / "progress"
    running = announce_then_sleep.delay(str(progress), 30)
    wait_for(progress.exists, timeout=10)

    # When it is revoked with terminate and SIGUSR1 (sent as asked: its default ends a child)
    running.revoke(terminate=True, signal="SIGUSR1")

    # Then it ends REVOKED, is not counted as a lost task, and the worker goes on
    wait_for(lambda: running.state == "REVOKED", timeout=10)
    assert "Sending SIGUSR1 to process" in worker.output()
    assert f"while running itproj.tasks.announce_then_sleep[{running.id}]" not in worker.output()
    assert add.delay(1, 1).get(timeout=10) == 2
    assert progress.read_text() == "started\n"


def test_a_message_with_a_bad_timelimit_is_dead_lettered_once_and_kills_no_child(
    itproj: Any, workers: WorkerFactory
) -> None:
    """Regression (fault suite): ``timelimit=["a", "b"]`` killed the child that took it.

    The TypeError came from setting the child's deadline, outside the guarded run; the
    message went back to the queue uncounted and killed the next child, for ever.
    """
    # Given a two-child worker
    worker = workers.start("-c", "2")
    wait_for(lambda: len(children_of(worker.pid)) == 2, timeout=10)
    children = children_of(worker.pid)
    from itproj.tasks import add

    # When a raw message whose timelimit holds strings is published
    good = TaskMessage("itproj.tasks.add", new_id(), (1, 2)).to_wire()
    bad = with_header(good, "timelimit", ["a", "b"])
    itproj.broker.publish(OutgoingMessage("celery", bad))

    # Then it is dead-lettered, named in the log, and the worker goes on
    worker.wait_for_log("header 'timelimit' must be [hard, soft] seconds")
    assert [add.delay(i, i).get(timeout=10) for i in range(4)] == [0, 2, 4, 6]
    letters = [d for d in itproj.broker.dead_letters() if d.body == bad]
    assert len(letters) == 1
    assert worker.output().count("Moved an undecodable message to the dead-letter store") == 1
    # And no child died: the same two processes still run
    assert children_of(worker.pid) == children
    assert "exited" not in worker.output()


def test_sigkilled_children_rerun_at_most_the_task_each_was_running(
    itproj: Any, workers: WorkerFactory, tmp_path: Path
) -> None:
    """Regression: a child stored and acked a batch of quick tasks only after the batch.

    So a SIGKILL made every task of the batch that had finished before it run again (23-39
    re-runs for 20 kills in the fault suite). Only the one running may run again now.
    """
    # Given a two-child worker draining rounds of short tasks that each note their run
    worker = workers.start("-c", "2")
    from itproj.tasks import record

    marks = tmp_path / "marks"
    rounds, per_round = 15, 200
    results = []
    kills = 0
    for _ in range(rounds):
        done = len(list(iter_lines(marks)))
        results += [record.delay(str(marks)) for _ in range(per_round)]
        # When a child is SIGKILLed while the round drains
        wait_for(lambda done=done: len(list(iter_lines(marks))) >= done + per_round // 4, 30)
        children = children_of(worker.pid)
        victim = random.choice(sorted(children))
        os.kill(victim, signal.SIGKILL)
        kills += 1
        wait_for(lambda victim=victim: len(children_of(worker.pid) - {victim}) == 2, timeout=15)
    ids = {r.id for r in results}
    wait_for(lambda: ids <= set(iter_lines(marks)), timeout=60)
    # (everything left over, e.g. returned by the warm stop, runs in a burst worker)
    assert worker.stop() == 0
    workers.start("-c", "1", "--burst", ready=False).proc.wait(timeout=60)

    # Then every task ran, and at most one task per kill ran twice
    runs = Counter(iter_lines(marks))
    assert set(runs) == ids
    duplicates = sum(runs.values()) - len(ids)
    print(f"{kills} kills, {duplicates} duplicate runs")
    assert duplicates <= kills
    # And every result was stored
    metas = itproj.backend.get_many([r.id for r in results])
    assert {m["status"] for m in metas} == {"SUCCESS"}
