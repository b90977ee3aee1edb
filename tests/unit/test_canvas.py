"""Canvas: signatures, chain, group, chord, map/starmap/chunks.

Three ways of running are covered: data only (construction, merging, wire round
trips), eager (``task_always_eager``), and "sent" — published to a memory broker and
executed by :func:`drain`, a minimal in-test worker loop over ``trace_task``, so the
message-level behaviour (chain embed, chord counting, redelivery) is tested without
a worker process.
"""

from __future__ import annotations

import json
import pickle
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from chard import Celery, chain, chord, chunks, group, maybe_signature, signature, xmap, xstarmap
from chard.backends.base import ResultBackend
from chard.brokers.base import Delivery
from chard.canvas import Signature
from chard.exceptions import ChordError
from chard.execution.trace import trace_task
from chard.protocol.message import TaskMessage
from chard.result import AsyncResult, GroupResult
from chard.task import Context


@pytest.fixture
def app() -> Iterator[Celery]:
    app = Celery("t", broker="memory://", backend="memory://")

    @app.task(name="proj.tasks.add")
    def add(x: int, y: int, debug: bool = False) -> int:
        return x + y

    @app.task(name="proj.tasks.mul")
    def mul(x: int, y: int) -> int:
        return x * y

    @app.task(name="proj.tasks.xsum")
    def xsum(numbers: list[int]) -> int:
        return sum(numbers)

    @app.task(name="proj.tasks.boom")
    def boom(*args: Any) -> None:
        raise ValueError("boom")

    @app.task(name="proj.tasks.record")
    def record(*args: Any) -> list[Any]:
        RECORDED.append(args)
        return list(args)

    @app.task(name="proj.tasks.record_id")
    def record_id(task_id: str) -> str:
        """An errback of Celery's older form: one parameter, sent with the failed id."""
        RECORDED.append((task_id,))
        return task_id

    @app.task(name="proj.tasks.run_sig")
    def run_sig(sig: dict[str, Any]) -> Any:
        return signature(sig, app=app).apply().get()

    RECORDED.clear()
    yield app
    app.close()


RECORDED: list[tuple[Any, ...]] = []


def t(app: Celery, name: str) -> Any:
    return app.tasks[f"proj.tasks.{name}"]


def backend_of(app: Celery) -> ResultBackend:
    backend = app.backend
    assert backend is not None
    return backend


def to_request(message: TaskMessage) -> Context:
    return Context(
        id=message.id,
        args=message.args,
        kwargs=message.kwargs,
        called_directly=False,
        root_id=message.root_id,
        parent_id=message.parent_id,
        group=message.group,
        group_index=message.group_index,
        callbacks=message.callbacks,
        errbacks=message.errbacks,
        chain=message.chain,
        chord=message.chord,
        hostname="test@unit",
    )


def fetch(app: Celery, limit: int = 1000) -> list[Delivery]:
    return app.broker.fetch(["celery"], limit, 0)


def execute(app: Celery, delivery: Delivery) -> None:
    message = TaskMessage.from_wire(delivery.body, app.accept_content)
    trace_task(app.tasks[message.task], to_request(message))
    delivery.ack()


def drain(app: Celery, *, reverse: bool = False) -> int:
    """Run every queued message (and what they send) in this thread; return how many ran."""
    count = 0
    while deliveries := fetch(app):
        for delivery in reversed(deliveries) if reverse else deliveries:
            execute(app, delivery)
            count += 1
    return count


# -- signatures as data -------------------------------------------------------------


def test_signature_forms_and_repr(app: Celery) -> None:
    add = t(app, "add")
    assert repr(add.s(2, 2)) == "proj.tasks.add(2, 2)"
    assert repr(add.s(2, debug=True)) == "proj.tasks.add(2, debug=True)"
    sig = add.signature((2, 2), countdown=10)
    assert (sig.args, sig.options) == ((2, 2), {"countdown": 10})
    assert signature("proj.tasks.add", args=(2, 2), countdown=10, app=app) == sig
    assert add.si(2, 2).immutable
    assert not add.s(2, 2).immutable
    assert sig.type is add


def test_partials_prepend_args_and_merge_kwargs_and_options(app: Celery) -> None:
    add = t(app, "add")
    partial = add.s(2, debug=True).set(queue="a")
    clone = partial.clone((8,), {"debug": False}, countdown=1)
    assert clone.args == (8, 2)  # Celery prepends: add.s(2).delay(8) runs add(8, 2)
    assert clone.kwargs == {"debug": False}
    assert clone.options == {"queue": "a", "countdown": 1}
    assert partial.args == (2,)
    assert partial.options == {"queue": "a"}
    assert add.si(2, 2).clone((8,), {"debug": True}).args == (2, 2)


def test_link_and_link_error_are_stored_as_signatures(app: Celery) -> None:
    add, record = t(app, "add"), t(app, "record")
    sig = add.s(1, 1)
    sig.link(record.s())
    sig.link_error(record.si("failed"))
    wire = json.loads(json.dumps(sig))
    assert wire["options"]["link"][0]["task"] == "proj.tasks.record"
    assert wire["options"]["link_error"][0]["immutable"] is True


def make_canvases(app: Celery) -> list[Signature[Any]]:
    add, mul, xsum = t(app, "add"), t(app, "mul"), t(app, "xsum")
    return [
        add.s(1, 2),
        add.s(4, 4) | mul.s(8),
        group(add.s(i, i) for i in range(3)),
        chord([add.s(i, i) for i in range(3)], xsum.s()),
        chord([chain(add.s(1, 1), mul.s(2)), group(add.s(1), add.s(2))], xsum.s()),
        xsum.map([[1, 2], [3]]),
        add.starmap([(1, 2), (3, 4)]),
        add.chunks([(1, 2), (3, 4), (5, 6)], 2),
    ]


def test_every_primitive_round_trips_through_json_and_pickle(app: Celery) -> None:
    for canvas in make_canvases(app):
        wire = json.loads(json.dumps(canvas))
        rebuilt = signature(wire, app=app)
        assert type(rebuilt) is type(canvas)
        assert rebuilt.to_dict() == canvas.to_dict()
        assert repr(rebuilt) == repr(canvas)
        assert pickle.loads(pickle.dumps(canvas)).to_dict() == canvas.to_dict()
    assert [c["subtask_type"] for c in make_canvases(app)] == [
        None,
        "chain",
        "group",
        "chord",
        "chord",
        "xmap",
        "xstarmap",
        "chunks",
    ]


def test_subscripted_signature_is_the_same_dict_at_runtime(app: Celery) -> None:
    # Signature and chord are Generic for type checkers; subscripting them at runtime
    # (an annotation without the __future__ import, Signature[int](...)) changes nothing.
    sig = Signature[int]("proj.tasks.add", (1, 2), app=app)
    assert type(sig) is Signature
    assert sig == Signature("proj.tasks.add", (1, 2))
    assert isinstance(sig, dict)
    assert pickle.loads(pickle.dumps(sig)) == sig
    assert Signature.from_dict(json.loads(json.dumps(sig))) == sig
    assert type(chord[int]([t(app, "add").s(1, 1)], t(app, "xsum").s())) is chord


def test_sending_returns_the_result_classes_the_types_declare(app: Celery) -> None:
    # tests/typing/check_canvas.py declares these types; the runtime must agree.
    add, xsum = t(app, "add"), t(app, "xsum")
    assert type(add.s(1, 2).delay()) is AsyncResult
    assert type(chain(add.s(1, 2), add.s(3))()) is AsyncResult
    assert type(chord([add.s(1, 1)])(xsum.s())) is AsyncResult
    assert type(chord([add.s(1, 1)], xsum.s()).apply_async()) is AsyncResult
    parts = add.chunks([(1, 2), (3, 4)], 1)
    for sent in (
        group(add.s(1, 2)).apply_async(),
        group(add.s(1, 2))(),
        group(add.s(1, 2)).delay(),
    ):
        assert type(sent) is GroupResult
    for sent in (parts.apply_async(), parts.delay(), parts()):
        assert type(sent) is GroupResult
        assert len(sent.results) == 2


def test_celery_shaped_dicts(app: Celery) -> None:
    add, xsum = t(app, "add"), t(app, "xsum")
    wire = chord([add.s(1, 1)], xsum.s()).to_dict()
    assert wire["task"] == "celery.chord"
    assert wire["kwargs"]["header"]["task"] == "celery.group"
    assert wire["kwargs"]["body"]["task"] == "proj.tasks.xsum"
    assert (add.s(1, 1) | xsum.s()).to_dict()["kwargs"]["tasks"][1]["task"] == "proj.tasks.xsum"
    assert xsum.map([[1]]).to_dict()["task"] == "celery.map"
    assert maybe_signature(None) is None
    assert isinstance(maybe_signature(add.s(1, 1).to_dict(), app=app), Signature)


def test_or_operator_builds_chains_and_upgrades_to_chords(app: Celery) -> None:
    add, mul, xsum = t(app, "add"), t(app, "mul"), t(app, "xsum")
    flat = add.s(1, 1) | mul.s(2) | mul.s(3)
    assert isinstance(flat, chain)
    assert len(flat.tasks) == 3
    assert isinstance((add.s(1, 1) | mul.s(2)) | (mul.s(3) | mul.s(4)), chain)
    upgraded = group(add.s(i, i) for i in range(3)) | xsum.s()
    assert isinstance(upgraded, chord)
    assert upgraded.body.task == "proj.tasks.xsum"
    longer = upgraded | mul.s(2)
    assert isinstance(longer, chord)
    assert isinstance(longer.body, chain)
    tail = add.s(1, 1) | group(mul.s(i) for i in range(3))
    assert isinstance(tail, chain)
    assert isinstance(tail.tasks[-1], group)
    assert repr(flat) == "proj.tasks.add(1, 1) | proj.tasks.mul(2) | proj.tasks.mul(3)"


def test_group_accepts_generators_lists_and_flattens(app: Celery) -> None:
    add = t(app, "add")
    assert len(group(add.s(i, i) for i in range(10)).tasks) == 10
    assert len(group([add.s(1, 1), group(add.s(2, 2), add.s(3, 3))]).tasks) == 3
    assert len(group(add.s(1, 1)).tasks) == 1


def test_builtin_tasks_are_registered_but_not_user_tasks(app: Celery) -> None:
    assert {"celery.map", "celery.starmap", "celery.chunks"} <= set(app.tasks)
    assert "celery.map" not in app.tasks.user_tasks()


def test_chunks_group_splits_items(app: Celery) -> None:
    add = t(app, "add")
    parts = add.chunks(zip(range(10), range(10), strict=True), 4).group()
    assert [len(p["kwargs"]["it"]) for p in parts.tasks] == [4, 4, 2]
    assert all(isinstance(p, xstarmap) for p in parts.tasks)
    assert isinstance(add.map([1]), xmap)
    assert isinstance(add.chunks([], 1), chunks)
    with pytest.raises(ValueError, match="n must be >= 1"):
        add.chunks([(1, 2)], 0)


# -- eager -----------------------------------------------------------------------


@pytest.fixture
def eager(app: Celery) -> Celery:
    app.conf.task_always_eager = True
    return app


def test_eager_every_primitive(eager: Celery) -> None:
    add, mul, xsum = t(eager, "add"), t(eager, "mul"), t(eager, "xsum")
    assert add.s(2).delay(8).get() == 10
    assert group(add.s(i, i) for i in range(10))().get() == list(range(0, 20, 2))
    assert group(add.s(i) for i in range(3))(10).get() == [10, 11, 12]
    assert chain(add.s(4, 4) | mul.s(8))().get() == 64
    assert (add.s(4) | mul.s(8))(4).get() == 64
    assert chord((add.s(i, i) for i in range(10)), xsum.s())().get() == 90
    assert (group(add.s(i, i) for i in range(10)) | xsum.s())().get() == 90
    assert (add.s(1, 1) | group(mul.s(i) for i in range(3)) | xsum.s())().get() == 6
    assert ~xsum.map([range(10), range(100)]) == [45, 4950]
    assert ~add.starmap(zip(range(3), range(3), strict=True)) == [0, 2, 4]
    assert add.chunks(zip(range(5), range(5), strict=True), 2)().get() == [[0, 2], [4, 6], [8]]


def test_eager_links_and_chord_failure(eager: Celery) -> None:
    add, boom, record, xsum = (
        t(eager, "add"),
        t(eager, "boom"),
        t(eager, "record"),
        t(eager, "xsum"),
    )
    add.s(1, 1).apply_async(link=record.s("ok"))
    assert RECORDED == [(2, "ok")]
    failed = boom.s().apply_async(link_error=record.si("err"))
    assert RECORDED[-1] == ("err",)
    assert failed.failed()
    body = xsum.s()
    body.link_error(record.si("chord"))
    result = chord([add.s(1, 1), boom.s()], body)()
    with pytest.raises(ValueError, match="boom"):  # the member's own error, as in Celery
        result.get()
    assert RECORDED[-1] == ("chord",)


def test_eager_chain_returns_last_result_with_parents(eager: Celery) -> None:
    add, mul = t(eager, "add"), t(eager, "mul")
    result = (add.s(1, 1) | mul.s(3) | mul.s(10))()
    assert result.get() == 60
    assert result.parent.get() == 6
    assert result.parent.parent.get() == 2
    assert result.parent.parent.parent is None


# -- sent (memory broker, in-test worker loop) ------------------------------------------


def test_sent_canvases_run_like_the_guide(app: Celery) -> None:
    add, mul, xsum = t(app, "add"), t(app, "mul"), t(app, "xsum")
    results = [
        add.s(2).delay(8),
        group(add.s(i, i) for i in range(10))(),
        group(add.s(i) for i in range(10))(10),
        chain(add.s(4, 4) | mul.s(8))(),
        (add.s(4) | mul.s(8))(4),
        chord((add.s(i, i) for i in range(10)), xsum.s())(),
        (group(add.s(i, i) for i in range(10)) | xsum.s())(),
        xsum.map([range(10), range(100)]).delay(),
        add.chunks(zip(range(6), range(6), strict=True), 4)(),
    ]
    drain(app)
    values = [r.get(timeout=1) for r in results]
    assert values == [
        10,
        list(range(0, 20, 2)),
        list(range(10, 20)),
        64,
        64,
        90,
        90,
        [45, 4950],
        [[0, 2, 4, 6], [8, 10]],
    ]


def test_group_is_published_in_one_round_trip(app: Celery, monkeypatch: pytest.MonkeyPatch) -> None:
    add = t(app, "add")
    calls: list[int] = []
    original = app.broker._publish

    def counting(messages: list[Any]) -> None:
        calls.append(len(messages))
        original(messages)

    monkeypatch.setattr(app.broker, "_publish", counting)
    result = group(add.s(i, i) for i in range(50))()
    chord([add.s(i, i) for i in range(20)], t(app, "xsum").s())()
    assert calls == [50, 20]
    drain(app)
    assert result.completed_count() == 50
    assert result.ready()
    assert result.successful()


def test_chain_result_parents_and_ids(app: Celery) -> None:
    add, mul = t(app, "add"), t(app, "mul")
    result = (add.s(1, 1) | mul.s(3) | mul.s(10))()
    assert app.broker.queue_size("celery") == 1  # only the first step is queued
    drain(app)
    assert result.get(timeout=1) == 60
    assert result.parent.get(timeout=1) == 6
    first = result.parent.parent
    assert first.get(timeout=1) == 2
    assert first.parent is None
    meta = backend_of(app).get_task_meta(result.id)
    assert meta["parent_id"] == result.parent.id


def test_group_inside_chain_and_chain_inside_group(app: Celery) -> None:
    add, mul, xsum = t(app, "add"), t(app, "mul"), t(app, "xsum")
    fanout = (add.s(1, 1) | group(mul.s(i) for i in range(4)))()
    nested = group(chain(add.si(1, 1), mul.s(10)), add.si(5, 5), add.s(1) | mul.s(3))(2)
    longer = (add.s(1, 1) | group(mul.s(i) for i in range(3)) | xsum.s() | add.s(100))()
    drain(app)
    assert isinstance(fanout, GroupResult)
    assert fanout.get(timeout=1) == [0, 2, 4, 6]
    assert fanout.parent is not None
    assert fanout.parent.get(timeout=1) == 2
    assert nested.get(timeout=1) == [20, 10, 9]
    assert longer.get(timeout=1) == 106


def test_chord_of_chords_and_ordered_results(app: Celery) -> None:
    add, xsum, record = t(app, "add"), t(app, "xsum"), t(app, "record")
    inner = [chord([add.s(i, i), add.s(i, 1)], xsum.s()) for i in range(3)]
    result = chord(inner, record.s())()
    ordered = chord([add.s(i, 0) for i in range(30)], record.s())()
    drain(app, reverse=True)  # header tasks finish in reverse order
    assert result.get(timeout=1) == [[1, 4, 7]]
    assert ordered.get(timeout=1) == [list(range(30))]


def test_chord_header_failure_fails_body_with_chord_error(app: Celery) -> None:
    add, boom, xsum, record = t(app, "add"), t(app, "boom"), t(app, "xsum"), t(app, "record")
    body = xsum.s()
    body.link_error(record.si("errback"))
    result = (chord([add.s(1, 1), boom.s(), add.s(2, 2)], body) | add.s(1))()
    drain(app)
    with pytest.raises(ChordError) as info:
        result.parent.get(timeout=1, follow_parents=False)
    failed_id = result.parent.parent.results[1].id
    assert failed_id in str(info.value)
    assert "ValueError" in str(info.value)
    assert RECORDED == [("errback",)]
    with pytest.raises(ChordError):
        result.get(timeout=1, follow_parents=False)  # the step after the body fails too


def test_chain_failure_fails_the_remaining_steps(app: Celery) -> None:
    add, boom, mul = t(app, "add"), t(app, "boom"), t(app, "mul")
    result = (add.s(1, 1) | boom.s() | mul.s(2))()
    drain(app)
    with pytest.raises(ValueError, match="boom"):
        result.get(timeout=1)


def test_apply_async_link_and_link_error(app: Celery) -> None:
    add, boom, record = t(app, "add"), t(app, "boom"), t(app, "record")
    add.apply_async((2, 2), link=record.s("linked"))
    failed = boom.apply_async(link_error=t(app, "record_id").s())
    drain(app)
    assert (4, "linked") in RECORDED
    assert (failed.id,) in RECORDED


def test_signature_travels_as_a_task_argument(app: Celery) -> None:
    result = t(app, "run_sig").delay(t(app, "add").s(20, 22))
    drain(app)
    assert result.get(timeout=1) == 42


def test_redelivered_header_task_counts_once(app: Celery) -> None:
    add, record = t(app, "add"), t(app, "record")
    result = chord([add.s(1, 1), add.s(2, 2), add.s(3, 3)], record.s())()
    first, second, third = fetch(app)
    execute(app, first)
    duplicate = TaskMessage.from_wire(first.body, app.accept_content)
    trace_task(app.tasks[duplicate.task], to_request(duplicate))  # redelivered: no double count
    execute(app, second)
    assert not fetch(app), "body must wait for the third header task"
    execute(app, third)
    trace_task(app.tasks[duplicate.task], to_request(duplicate))  # late duplicate: no 2nd body
    assert drain(app) == 1
    assert result.get(timeout=1) == [[2, 4, 6]]


def test_redelivery_after_crash_between_marker_and_count_completes(app: Celery) -> None:
    add, record = t(app, "add"), t(app, "record")
    result = chord([add.s(1, 1), add.s(2, 2)], record.s())()
    first, second = fetch(app)
    message = TaskMessage.from_wire(first.body, app.accept_content)
    # Simulate a worker that stored its result and set its marker, then died.
    backend_of(app).store_result(message.id, 2, "SUCCESS")
    backend_of(app).incr(
        f"{backend_of(app).group_key(message.group or '')}.cm.{message.group_index}"
    )
    execute(app, second)
    assert not fetch(app)
    execute(app, first)  # the redelivery: marker says "seen", results say "all done"
    drain(app)
    assert result.get(timeout=1) == [[2, 4]]


def test_chord_of_1000_with_concurrent_workers(app: Celery) -> None:
    add, xsum = t(app, "add"), t(app, "xsum")
    result = chord((add.s(i, i) for i in range(1000)), xsum.s())()
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                deliveries = fetch(app, 5)
            if not deliveries:
                return
            for delivery in deliveries:
                execute(app, delivery)

    with ThreadPoolExecutor(8) as pool:
        for future in [pool.submit(work) for _ in range(8)]:
            future.result()
    drain(app)
    assert result.get(timeout=5) == sum(range(0, 2000, 2))


def test_chord_needs_a_result_backend() -> None:
    app = Celery("nobackend", broker="memory://")
    add = app.task(name="proj.tasks.add")(lambda x, y: x + y)
    with pytest.raises(NotImplementedError, match="result backend"):
        chord([add.s(1, 1)], add.s(1))()
