"""What a dead prefork child had finished: the executor records it, the supervisor settles it."""

from __future__ import annotations

import pytest

from chard import Celery, states
from chard.brokers.base import Delivery
from chard.protocol import serializers
from chard.protocol.message import TaskMessage
from chard.worker import execute
from chard.worker.execute import Executor, JobPayload
from chard.worker.finished import settle_finished
from chard.worker.slot import HELD_BYTES, Finished, Slot, digest


def fetch_all(app: Celery, count: int) -> list[Delivery]:
    deliveries = app.broker.fetch(["celery"], count, timeout=1.0)
    assert len(deliveries) == count
    return deliveries


def payload_of(app: Celery, delivery: Delivery) -> JobPayload:
    message = TaskMessage.from_wire(delivery.body, app.accept_content)
    return JobPayload(delivery.body, delivery.queue, delivery.delivery_count, message)


def test_finished_messages_are_acked_and_held_results_stored_first(app: Celery) -> None:
    # Given a dead child's three leased messages: one done, one whose result it held, one
    # it never started
    for _ in range(3):
        app.send_task("t.add", (1, 1))
    done, held, unstarted = fetch_all(app, 3)
    held_id = TaskMessage.from_wire(held.body, app.accept_content).id
    assert app.backend is not None
    meta = app.backend.encode_meta(held_id, 2, states.SUCCESS)
    finished = Finished(
        frozenset({digest(done.body)}),
        frozenset({digest(held.body)}),
        (serializers.json_dumps(meta),),
    )

    # When the supervisor settles what it finished
    left = settle_finished(app, finished, [done, held, unstarted], give_up=lambda: False)

    # Then only the unstarted one is left to return, and the held result is stored
    assert left == [unstarted]
    assert app.AsyncResult(held_id).get(timeout=1) == 2
    unstarted.reject(requeue=True)
    assert app.broker.queue_size("celery") == 1  # the two finished ones were acked


def test_in_a_cold_stop_held_results_are_not_waited_for(app: Celery) -> None:
    # (storing could wait on an unreachable backend; the messages run again instead)
    for _ in range(2):
        app.send_task("t.add", (1, 1))
    done, held = fetch_all(app, 2)
    finished = Finished(frozenset({digest(done.body)}), frozenset({digest(held.body)}), (b"{}",))

    left = settle_finished(app, finished, [done, held], give_up=lambda: True)

    assert left == [held]


def test_results_that_cannot_be_stored_run_again(app: Celery) -> None:
    app.send_task("t.add", (1, 1))
    (held,) = fetch_all(app, 1)
    finished = Finished(frozenset(), frozenset({digest(held.body)}), (b"not json",))

    assert settle_finished(app, finished, [held], give_up=lambda: False) == [held]


def test_a_batch_records_each_end_in_the_slot_before_the_next_task_starts(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an executor with a slot, and a task that looks at the slot while it runs
    monkeypatch.setattr(execute, "QUICK", 60.0)  # any task that ran before counts as quick
    slot = Slot()
    seen: list[Finished] = []

    @app.task(name="t.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="t.look", ignore_result=True)
    def look() -> None:
        seen.append(slot.finished())

    executor = Executor(app, "unit@host", slot=slot)
    add.delay(0, 0)
    look.delay()
    warm_ups = [payload_of(app, d) for d in fetch_all(app, 2)]
    executor.run(warm_ups)  # first runs: not yet known to be quick, nothing held
    seen.clear()
    for n in range(2):
        add.delay(n, n)
    look.delay()
    batch = [payload_of(app, d) for d in fetch_all(app, 3)]

    # When they run as one batch
    outcomes = executor.run(batch)

    # Then, while the third ran, the first two were recorded with the results held for them
    assert isinstance(outcomes, list)
    assert [o.state for o in outcomes] == [states.SUCCESS] * 3
    (during,) = seen
    assert during.pending == {digest(batch[0].body), digest(batch[1].body)}
    assert [serializers.json_loads(m)["result"] for m in during.metas] == [0, 2]
    # And after the batch's one store, all are done and nothing runs
    everything = frozenset(digest(p.body) for p in [*warm_ups, *batch])
    assert slot.finished() == Finished(everything, frozenset(), ())
    assert slot.running() is None


def test_a_message_settled_otherwise_than_by_an_ack_is_not_recorded_done(app: Celery) -> None:
    # (a requeued or dead-lettered message must run again, or be set aside again)
    slot = Slot()
    app.send_task("t.unknown")
    (delivery,) = fetch_all(app, 1)

    outcome = Executor(app, "unit@host", slot=slot).run(payload_of(app, delivery))

    assert not isinstance(outcome, list)
    assert outcome.action == "dead_letter"
    assert slot.finished() == Finished(frozenset(), frozenset(), ())


def test_a_held_result_too_big_for_the_slot_is_stored_at_once(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a quick task whose result does not fit in the slot
    monkeypatch.setattr(execute, "QUICK", 60.0)
    slot = Slot()
    seen: list[tuple[Finished, str]] = []

    @app.task(name="t.big")
    def big() -> str:
        return "x" * (HELD_BYTES + 1)

    @app.task(name="t.look", ignore_result=True)
    def look(task_id: str) -> None:
        assert app.backend is not None
        seen.append((slot.finished(), app.backend.get_task_meta(task_id)["status"]))

    executor = Executor(app, "unit@host", slot=slot)
    big.delay()
    look.delay("none")
    executor.run([payload_of(app, d) for d in fetch_all(app, 2)])  # now known to be quick
    seen.clear()
    result = big.delay()
    look.delay(result.id)
    batch = [payload_of(app, d) for d in fetch_all(app, 2)]

    # When it runs in a batch
    executor.run(batch)

    # Then its result was stored before the next task started, and it is done
    ((during, state),) = seen
    assert state == states.SUCCESS
    assert digest(batch[0].body) in during.done
    assert during.pending == frozenset()
