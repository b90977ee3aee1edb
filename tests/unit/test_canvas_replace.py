"""``self.replace(sig)``: a task hands its id, links, chord membership and chain on.

Run two ways: eager (``apply()``), and sent to a memory broker and executed message by
message by ``drain`` (the same ``trace_task`` a worker runs), so the message-level
inheritance is what is tested. The worker processes are in
``tests/integration/test_canvas_worker.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from chard import Celery, chain, chord, group
from chard.canvas import Signature
from chard.exceptions import ImproperlyConfigured
from chard.protocol.ids import new_id
from tests.unit.test_canvas import drain

RECORDED: list[tuple[Any, ...]] = []


@pytest.fixture
def app() -> Iterator[Celery]:
    app = Celery("t", broker="memory://", backend="memory://")

    @app.task(name="add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="mul")
    def mul(x: int, y: int) -> int:
        return x * y

    @app.task(name="xsum")
    def xsum(numbers: list[int]) -> int:
        return sum(numbers)

    @app.task(name="record")
    def record(*args: Any) -> list[Any]:
        RECORDED.append(args)
        return list(args)

    @app.task(name="record_id")
    def record_id(task_id: str) -> str:
        return task_id

    @app.task(name="boom")
    def boom(*args: Any) -> None:
        raise ValueError("boom")

    @app.task(name="by_add", bind=True)
    def by_add(self: Any, x: int) -> Any:
        return self.replace(add.s(x, 100))

    @app.task(name="by_chain", bind=True)
    def by_chain(self: Any, x: int) -> Any:
        return self.replace(add.s(x, 1) | mul.s(2))

    @app.task(name="by_group", bind=True)
    def by_group(self: Any, n: int) -> Any:
        return self.replace(group(add.s(i, i) for i in range(n)))

    @app.task(name="by_boom", bind=True)
    def by_boom(self: Any) -> Any:
        return self.replace(boom.s())

    @app.task(name="by_sig", bind=True)
    def by_sig(self: Any, sig: Signature[Any]) -> Any:
        return self.replace(sig)

    RECORDED.clear()
    yield app
    app.close()


def t(app: Celery, name: str) -> Any:
    return app.tasks[name]


def test_a_replaced_task_keeps_its_id(app: Celery) -> None:
    result = t(app, "by_add").delay(1)
    drain(app)
    assert result.get(timeout=1) == 101


@pytest.mark.parametrize(
    ("name", "arg", "expected"), [("by_chain", 2, 6), ("by_group", 3, [0, 2, 4])]
)
def test_replacing_by_a_chain_or_a_group(app: Celery, name: str, arg: int, expected: Any) -> None:
    result = t(app, name).delay(arg)
    drain(app)
    assert result.get(timeout=1) == expected


def test_the_rest_of_the_chain_runs_after_the_replacement(app: Celery) -> None:
    add, mul = t(app, "add"), t(app, "mul")
    result = (add.s(1, 1) | t(app, "by_chain").s() | mul.s(10))()
    drain(app)
    assert result.get(timeout=1) == 60  # ((2 + 1) * 2) * 10
    assert result.parent is not None
    assert result.parent.get(timeout=1) == 6  # the replaced step's id holds the replacement's


def test_a_replaced_chord_member_still_counts(app: Celery) -> None:
    members = [t(app, "by_add").s(1), t(app, "by_chain").s(2), t(app, "by_group").s(2)]
    result = chord(members, t(app, "record").s())()
    drain(app)
    assert result.get(timeout=1) == [[101, 6, [0, 2]]]


def test_links_and_errbacks_move_to_the_replacement(app: Celery) -> None:
    record = t(app, "record")
    callback_id, errback_id = new_id(), new_id()
    ok = t(app, "by_chain").apply_async((2,), link=record.s("cb").set(task_id=callback_id))
    on_error = t(app, "record_id").s().set(task_id=errback_id)
    failed = t(app, "by_boom").apply_async(link_error=on_error)
    drain(app)
    assert ok.get(timeout=1) == 6
    assert app.AsyncResult(callback_id).get(timeout=1) == [6, "cb"]
    with pytest.raises(ValueError, match="boom"):
        failed.get(timeout=1)
    assert app.AsyncResult(errback_id).get(timeout=1) == failed.id


def test_replace_in_eager_mode_returns_the_replacement_value(app: Celery) -> None:
    assert t(app, "by_add").apply((1,)).get() == 101
    assert t(app, "by_chain").apply((2,)).get() == 6
    assert t(app, "by_group").apply((3,)).get() == [0, 2, 4]
    assert chain(t(app, "add").s(1, 1), t(app, "by_add").s()).apply().get() == 102


def test_replacing_by_a_chord_member_or_an_empty_chain_is_refused(app: Celery) -> None:
    member = t(app, "add").s(1, 1).set(chord={"task": "xsum"})
    with pytest.raises(ImproperlyConfigured, match="must not be part of a chord"):
        t(app, "by_sig").apply((member,)).get()
    with pytest.raises(ImproperlyConfigured, match="empty chain"):
        t(app, "by_sig").apply((chain(),)).get()
