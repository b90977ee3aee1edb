"""A task's end survives what goes wrong after it: hooks, follow-ups, bad embeds.

The end of a task is recorded once (``chard.execution.outcome``); a hook that raises,
an errback that cannot be sent or a malformed message must neither end it twice, nor
leave a workflow waiting, nor stop the worker that runs the next message.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chard import Celery, Task, chain, chord, group, states
from chard.brokers.base import OutgoingMessage
from chard.exceptions import ChordError, DecodeError
from chard.protocol.message import TaskMessage
from chard.result import GroupResult
from chard.testing import run_burst
from chard.worker import execute
from chard.worker.execute import Executor, JobPayload


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Celery]:
    """An app on SQLite files, so results outlive the worker that ran them."""
    application = Celery(
        "t", broker=f"sqlite:///{tmp_path}/broker.db", backend=f"sqlite:///{tmp_path}/results.db"
    )

    @application.task(name="t.add")
    def add(x: int, y: int = 1) -> int:
        return x + y

    @application.task(name="t.fail")
    def fail(*args: Any) -> None:
        raise ValueError("boom")

    @application.task(name="t.xsum")
    def xsum(values: list[int]) -> int:
        return sum(values)

    yield application
    application.close()


def t(app: Celery, name: str) -> Task[Any, Any]:
    return app.tasks[f"t.{name}"]


class RaisingHooks(Task[Any, Any]):
    """A task class whose hooks are buggy: they run after the end is recorded."""

    def on_success(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("on_success bug")

    def after_return(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("after_return bug")


def test_a_raising_hook_keeps_the_success_and_its_chain_in_a_prefork_batch(app: Celery) -> None:
    @app.task(name="t.hooked", base=RaisingHooks)
    def hooked() -> int:
        return 1

    whole = chain(t(app, "add").s(1, 1), t(app, "add").s(10))()
    first = whole.parent
    assert first is not None
    buggy = hooked.delay()

    stats = run_burst(app, pool="prefork", concurrency=1)

    assert (first.state, whole.get(timeout=10), buggy.get(timeout=10)) == ("SUCCESS", 12, 1)
    assert stats.dead_lettered == 0
    assert app.broker.dead_letters() == []


def test_a_raising_after_return_in_a_batch_leaves_later_results_stored(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(execute, "QUICK", 60.0)  # every task counts as quick: results held

    @app.task(name="t.hooked", base=RaisingHooks)
    def hooked() -> int:
        return 1

    def payloads() -> list[JobPayload]:
        deliveries = app.broker.fetch(["celery"], 100, timeout=1.0)
        for delivery in deliveries:
            delivery.ack()
        return [
            JobPayload(
                d.body, d.queue, d.delivery_count, TaskMessage.from_wire(d.body, app.accept_content)
            )
            for d in deliveries
        ]

    executor = Executor(app, "h")
    batch = [t(app, "add").delay(1, 1), hooked.delay(), t(app, "add").delay(2, 2)]
    outcomes = executor.run(payloads())
    later = t(app, "add").delay(3, 3)
    alone = executor.run(payloads()[0])

    assert isinstance(outcomes, list)
    assert [o.state for o in outcomes] == ["SUCCESS"] * 3
    assert [r.get(timeout=5) for r in batch] == [2, 1, 4]
    assert (alone, later.get(timeout=5)) == (execute.ExecOutcome("ack", "SUCCESS"), 6)


def test_an_errback_that_cannot_be_sent_neither_hides_the_failure_nor_stops_the_worker(
    app: Celery,
) -> None:
    # passes the header checks, but its options cannot be sent (a chain must be a list)
    errback = {"task": "t.add", "args": [], "kwargs": {}, "options": {"chain": 5}}
    failing = app.send_task("t.fail", link_error=[errback])
    after = app.send_task("t.add", (1, 2))

    run_burst(app)

    assert failing.state == states.FAILURE
    assert after.get(timeout=5) == 3


def test_a_group_after_a_failed_step_ends_each_of_its_members(app: Celery) -> None:
    members = group(t(app, "add").s(1), t(app, "add").s(2))
    result = chain(t(app, "fail").s(1), members)()

    run_burst(app)

    assert [child.state for child in result.results] == [states.FAILURE] * 2
    with pytest.raises(ValueError, match="boom"):
        result.get(timeout=5)


def test_a_chord_after_a_failed_step_ends_its_header_and_its_body(app: Celery) -> None:
    header = [t(app, "add").s(1), t(app, "add").s(2)]
    result = chain(t(app, "fail").s(1), chord(header, t(app, "xsum").s()))()
    header_results = result.parent  # the chord's header group

    run_burst(app)

    assert isinstance(header_results, GroupResult)
    assert [child.state for child in header_results.results] == [states.FAILURE] * 2
    assert result.state == states.FAILURE
    assert isinstance(result.result, ChordError)
    with pytest.raises(ValueError, match="boom"):  # get() re-raises the parents' error first
        result.get(timeout=5)


def _raw(headers: Any, embed: Any = None) -> bytes:
    body = base64.b64encode(json.dumps([[1, 2], {}, embed or {}]).encode()).decode()
    envelope = {
        "headers": headers,
        "body": body,
        "content-type": "application/json",
        "properties": {"body_encoding": "base64"},
    }
    return json.dumps(envelope).encode()


def test_malformed_headers_and_embeds_are_set_aside_and_the_next_task_runs(app: Celery) -> None:
    app.broker.publish(
        [
            OutgoingMessage("celery", _raw("not an object")),
            OutgoingMessage(
                "celery", _raw({"task": "t.add", "id": "bad-embed"}, {"errbacks": [{}]})
            ),
        ]
    )
    after = app.send_task("t.add", (1, 2))

    stats = run_burst(app)

    assert stats.dead_lettered == 2
    assert len(app.broker.dead_letters()) == 2
    bad = app.AsyncResult("bad-embed")
    assert bad.state == states.FAILURE
    assert isinstance(bad.result, DecodeError)
    assert after.get(timeout=5) == 3
