"""A prefork child's slot: what it writes is what its parent reads, across a fork."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

from chard.worker.slot import (
    DONE_SLOTS,
    HELD_BYTES,
    STAT_FIELDS,
    Finished,
    Running,
    Slot,
    digest,
)

_FORK = multiprocessing.get_context("fork")


def test_a_slot_reads_back_what_was_written() -> None:
    slot = Slot()
    assert (slot.running(), slot.deadline, slot.consumer_id, slot.retired) == (
        None,
        None,
        "",
        None,
    )

    slot.announce("consumer-1")
    slot.begin("task-1", "proj.tasks.add", stores_result=True)
    slot.set_limit(30.0)

    assert slot.consumer_id == "consumer-1"
    assert slot.running() == Running("task-1", "proj.tasks.add", stores_result=True)
    deadline = slot.deadline
    assert deadline is not None
    assert 29.0 < deadline - time.monotonic() <= 30.0
    assert slot.limit == 30.0

    slot.end()
    assert (slot.running(), slot.deadline) == (None, None)
    assert slot.consumer_id == "consumer-1"  # kept: the leases are still the child's


def test_the_parent_sees_what_a_forked_child_wrote() -> None:
    # Given a slot made before the fork
    slot = Slot()

    def child() -> None:
        slot.announce("child-consumer")
        slot.begin("running-id", "proj.slow", stores_result=False)
        slot.mark_retired()
        slot.save_stats({"received": 3, "succeeded": 2, "failed": 1})

    # When a child writes to it and exits
    process = _FORK.Process(target=child)
    process.start()
    process.join(10)

    # Then the parent reads all of it
    assert process.exitcode == 0
    assert slot.consumer_id == "child-consumer"
    assert slot.running() == Running("running-id", "proj.slow", stores_result=False)
    assert slot.retired == "max_tasks"
    assert slot.stats() == {name: 0 for name in STAT_FIELDS} | {
        "received": 3,
        "succeeded": 2,
        "failed": 1,
    }

    # And a reset leaves it as new, for the next child
    slot.reset()
    assert (slot.running(), slot.consumer_id, slot.retired) == (None, "", None)
    assert set(slot.stats().values()) == {0}


def test_a_long_task_name_is_cut_not_overflowing() -> None:
    slot = Slot()
    slot.begin("task-1", "x" * 5000, stores_result=True)

    running = slot.running()
    assert running is not None
    assert (running.task_id, running.stores_result) == ("task-1", True)
    assert running.name.startswith("xxx")


# -- what a child finished but had not acked --------------------------------------------------


def test_finish_clears_the_running_task_and_remembers_the_done_message() -> None:
    slot = Slot()
    slot.begin("task-1", "proj.add", stores_result=True)

    slot.finish(digest(b"envelope-1"))
    slot.begin("task-2", "proj.add", stores_result=True)
    slot.finish(None)  # over, but not done here (e.g. requeued): not remembered

    assert slot.running() is None
    assert slot.finished() == Finished(frozenset({digest(b"envelope-1")}), frozenset(), ())


def test_held_results_are_pending_until_released() -> None:
    # Given two messages whose results are held for the end of the batch
    slot = Slot()
    slot.begin("a", "proj.add", stores_result=True)
    assert slot.hold(b'{"task_id":"a"}\n', digest(b"a"))
    slot.begin("b", "proj.add", stores_result=True)
    assert slot.hold(b'{"task_id":"b"}\n', digest(b"b"))

    # Then they are pending, with their results, and nothing runs
    assert slot.running() is None
    assert slot.finished() == Finished(
        frozenset(),
        frozenset({digest(b"a"), digest(b"b")}),
        (b'{"task_id":"a"}', b'{"task_id":"b"}'),
    )

    # When the results are stored, they are done; when given up, forgotten
    slot.release(stored=True)
    assert slot.finished() == Finished(frozenset({digest(b"a"), digest(b"b")}), frozenset(), ())
    assert slot.hold(b'{"task_id":"c"}\n', digest(b"c"))
    slot.release(stored=False)
    assert digest(b"c") not in slot.finished().done


def test_results_that_do_not_fit_are_refused_whole() -> None:
    slot = Slot()
    assert slot.hold(b"x" * (HELD_BYTES - 10) + b"\n", digest(b"a"))

    assert not slot.hold(b"y" * 20 + b"\n", digest(b"b"))

    assert slot.finished().pending == {digest(b"a")}


def test_only_the_newest_done_messages_are_remembered() -> None:
    slot = Slot()
    for n in range(DONE_SLOTS + 5):
        slot.finish(n)

    assert slot.finished().done == frozenset(range(5, DONE_SLOTS + 5))


def test_the_parent_reads_what_a_killed_child_had_finished() -> None:
    # Given a slot made before the fork
    slot = Slot()

    def child() -> None:
        slot.begin("a", "proj.add", stores_result=True)
        slot.finish(digest(b"envelope-a"))
        slot.begin("b", "proj.add", stores_result=True)
        slot.hold(b'{"status":"SUCCESS"}\n', digest(b"envelope-b"))
        slot.begin("c", "proj.add", stores_result=True)
        os.kill(os.getpid(), signal.SIGKILL)

    # When the child dies running its third task
    process = _FORK.Process(target=child)
    process.start()
    process.join(10)

    # Then the parent sees the one that ran, the one whose result it held, and the running one
    assert process.exitcode == -signal.SIGKILL
    assert slot.finished() == Finished(
        frozenset({digest(b"envelope-a")}),
        frozenset({digest(b"envelope-b")}),
        (b'{"status":"SUCCESS"}',),
    )
    assert slot.running() == Running("c", "proj.add", stores_result=True)

    # And a reset forgets it all, for the next child
    slot.reset()
    assert slot.finished() == Finished(frozenset(), frozenset(), ())
