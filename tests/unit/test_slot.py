"""A prefork child's slot: what it writes is what its parent reads, across a fork."""

from __future__ import annotations

import multiprocessing
import time

from chard.worker.slot import STAT_FIELDS, Running, Slot

_FORK = multiprocessing.get_context("fork")


def test_a_slot_reads_back_what_was_written() -> None:
    slot = Slot()
    assert (slot.running(), slot.deadline, slot.consumer_id, slot.retired) == (
        None,
        None,
        "",
        False,
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
    assert slot.retired
    assert slot.stats() == {name: 0 for name in STAT_FIELDS} | {
        "received": 3,
        "succeeded": 2,
        "failed": 1,
    }

    # And a reset leaves it as new, for the next child
    slot.reset()
    assert (slot.running(), slot.consumer_id, slot.retired) == (None, "", False)
    assert set(slot.stats().values()) == {0}


def test_a_long_task_name_is_cut_not_overflowing() -> None:
    slot = Slot()
    slot.begin("task-1", "x" * 5000, stores_result=True)

    running = slot.running()
    assert running is not None
    assert (running.task_id, running.stores_result) == ("task-1", True)
    assert running.name.startswith("xxx")
