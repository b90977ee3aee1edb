"""Celery's canvas behaviour that chard now matches (issue 14).

Eager (``apply()``) and sent: published to the memory broker and run message by
message through the worker's ``trace_task`` by ``drain``; the worker processes are in
``tests/integration/test_canvas_worker.py``.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import pytest

from chard import Celery, chain, chord, group, signature
from chard.canvas import Signature
from chard.exceptions import ChordError
from chard.request import Context
from tests.unit.test_canvas import drain

CALLS: list[tuple[Any, ...]] = []


@pytest.fixture
def app() -> Iterator[Celery]:
    app = Celery("t", broker="memory://", backend="memory://")

    @app.task(name="add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="xsum")
    def xsum(numbers: list[int]) -> int:
        return sum(numbers)

    @app.task(name="boom")
    def boom(*args: Any) -> None:
        raise ValueError("boom")

    @app.task(name="old_errback")
    def old_errback(task_id: str) -> str:
        """Celery's older errback form: one parameter, sent as a task with the failed id."""
        CALLS.append(("old", task_id))
        return task_id

    @app.task(name="new_errback")
    def new_errback(request: Context, exc: BaseException, traceback: str | None, tag: str) -> None:
        """Celery's errback form: called inline, as errback(request, exc, traceback)."""
        CALLS.append(("new", tag, request.id, type(exc).__name__, traceback is not None))

    @app.task(name="callback")
    def callback(*args: Any) -> None:
        CALLS.append(("callback", *args))

    @app.task(name="whoami", bind=True)
    def whoami(self: Any) -> dict[str, Any]:
        request = self.request
        return {"parent_id": request.parent_id, "priority": request.delivery_info["priority"]}

    @app.task(name="nested", bind=True)
    def nested(self: Any) -> dict[str, Any]:
        return {"me": self.request.id, "child": whoami.apply().get()}

    CALLS.clear()
    yield app
    app.close()


def t(app: Celery, name: str) -> Any:
    return app.tasks[name]


# -- chords ---------------------------------------------------------------------------


@pytest.mark.parametrize("eager", [False, True])
def test_a_failed_chord_raises_the_members_own_error(app: Celery, eager: bool) -> None:
    body = t(app, "xsum").s().on_error(t(app, "old_errback").s())
    sig = chord([t(app, "add").s(1, 1), t(app, "boom").s()], body)
    result = sig.apply() if eager else sig()
    drain(app)
    with pytest.raises(ValueError, match="boom"):
        result.get(timeout=1)
    assert [call[0] for call in CALLS] == ["old"]  # the body's errback, once
    if not eager:  # the stored body state is still Celery's ChordError
        with pytest.raises(ChordError, match=r"Dependency .* raised ValueError"):
            result.get(timeout=1, follow_parents=False)


@pytest.mark.parametrize("eager", [False, True])
def test_errbacks_are_called_in_both_of_celerys_forms(app: Celery, eager: bool) -> None:
    boom = t(app, "boom")
    sig = boom.s().on_error(t(app, "old_errback").s()).on_error(t(app, "new_errback").s("tag"))
    result = sig.apply() if eager else sig.delay()
    drain(app)
    assert sorted(CALLS, key=str) == [
        ("new", "tag", result.id, "ValueError", True),
        ("old", result.id),
    ]


def test_header_errbacks_run_once_per_failing_member(app: Celery) -> None:
    boom, add, new_errback = t(app, "boom"), t(app, "add"), t(app, "new_errback")
    members = [boom.s().on_error(new_errback.s(str(i))) for i in range(2)]
    result = chord([*members, add.s(1, 1)], t(app, "xsum").s())()
    drain(app)
    with pytest.raises(ValueError, match="boom"):
        result.get(timeout=1)
    assert sorted(call[1] for call in CALLS) == ["0", "1"]


def test_a_chain_in_a_chord_that_fails_early_ends_the_chord_and_calls_its_errbacks(
    app: Celery,
) -> None:
    # Given a chord member that is a chain whose first step fails, with an errback
    failing = chain(t(app, "boom").s(), t(app, "add").s(1)).on_error(t(app, "old_errback").s())
    result = chord([failing, t(app, "add").s(2, 2)], t(app, "xsum").s())()

    drain(app)

    # Then the chord ends (it used to wait forever for the chain's last step)
    with pytest.raises(ChordError):
        result.get(timeout=1, follow_parents=False)
    assert [call[0] for call in CALLS] == ["old"]


def test_chords_nest_in_chains_in_chords_and_headers_unroll(app: Celery) -> None:
    add, xsum = t(app, "add"), t(app, "xsum")
    inner = chain(add.s(1, 1), chord([add.s(1), add.s(2)], xsum.s()))  # 2 -> [3, 4] -> 7
    nested = chord([inner, add.s(10, 10)], xsum.s())()
    # Celery's test_nested_group_chord_counting_mixed: a group in a header is unrolled
    mixed = chord(
        [add.si(1, 0), chain(add.si(1, 0), add.s(0)), group(add.si(2, 0), add.si(3, 0))],
        t(app, "callback").s(),
    )()
    drain(app)
    assert nested.get(timeout=1) == 27
    mixed.get(timeout=1)
    assert CALLS == [("callback", [1, 1, 2, 3])]


def test_a_generator_header_is_not_consumed_at_construction(app: Celery) -> None:
    add = t(app, "add")
    made: list[int] = []

    def members() -> Iterator[Signature[Any]]:
        for i in range(3):
            made.append(i)
            yield add.s(i, i)

    sig = chord(members(), t(app, "xsum").s())
    assert made == []
    result = sig()
    drain(app)
    assert result.get(timeout=1) == 6
    assert made == [0, 1, 2]


# -- links on chains and groups ----------------------------------------------------------


def test_chain_on_error_and_link_error_reach_every_step(app: Celery) -> None:
    add, old_errback = t(app, "add"), t(app, "old_errback")
    steps = chain(add.s(1, 1), add.s(1), add.s(1))
    assert steps.on_error(old_errback.s()) is steps
    assert all(step.options["link_error"] == [old_errback.s()] for step in steps.tasks)
    failing = chain(add.s(1, 1), t(app, "boom").s(), add.s(1)).on_error(old_errback.s())
    failing.delay()
    drain(app)
    assert len(CALLS) == 1


def test_group_link_runs_the_callback_once_without_values(app: Celery) -> None:
    # Celery's rule (canvas.group.link): the first member gets an immutable clone
    add, callback = t(app, "add"), t(app, "callback")
    grouped = group(add.s(1, 1), add.s(2, 2))
    grouped.link(callback.s("done"))
    grouped.link(callback.s("done"))  # linking the same signature twice adds it once

    assert grouped.tasks[0].options["link"] == [callback.si("done")]
    assert "link" not in grouped.tasks[1].options
    result = grouped()
    drain(app)
    assert result.get(timeout=1) == [2, 4]
    assert CALLS == [("callback", "done")]


def test_group_or_task_is_a_chord(app: Celery) -> None:
    add, xsum = t(app, "add"), t(app, "xsum")
    result = (group(add.s(1, 1), add.s(2, 2)) | xsum.s())()
    drain(app)
    assert result.get(timeout=1) == 6


def test_chain_freeze_sets_the_chains_id(app: Celery) -> None:
    add = t(app, "add")
    steps = add.s(1, 1) | add.s(2)
    result = steps.freeze("my-id")
    assert (steps.id, result.id, steps.tasks[-1].id) == ("my-id", "my-id", "my-id")
    assert (add.s(1, 1) | add.s(2)).freeze().id is not None


# -- signatures as mutable dicts ----------------------------------------------------------


def test_signature_fields_are_settable_as_in_celery(app: Celery) -> None:
    sig = t(app, "add").s(1, 2)
    sig.args = (2, 3)
    sig.kwargs = {}
    sig.options["countdown"] = 0
    sig.options = {**sig.options, "queue": "celery"}
    sig.immutable = True
    assert sig == signature("add", (2, 3), {}, countdown=0, queue="celery", immutable=True, app=app)
    result = sig.delay(100)
    drain(app)
    assert result.get(timeout=1) == 5  # immutable: the 100 is not prepended


def test_priority_reaches_delivery_info_and_a_nested_apply_has_its_parent(app: Celery) -> None:
    whoami = t(app, "whoami")
    assert whoami.s().set(priority=7).apply().get() == {"parent_id": None, "priority": 7}
    outer = t(app, "nested").apply().get()
    assert outer["child"] == {"parent_id": outer["me"], "priority": None}


# -- checks at call time -------------------------------------------------------------------


def test_wrong_arguments_fail_at_call_time_unless_typing_is_off(app: Celery) -> None:
    add = t(app, "add")
    with pytest.raises(
        TypeError, match=r"task 'add' takes \(x, y\) .*missing a required argument: 'y'"
    ):
        add.delay(10)
    with pytest.raises(TypeError, match="unexpected keyword argument 'z'"):
        add.s(1, 2).delay(z=3)
    with pytest.raises(TypeError, match="typing=False"):
        group(add.s(1), add.s(1, 2)).delay()
    loose = app.task(name="loose", typing=False)(lambda x, y: x + y)
    assert loose.delay(10) is not None  # sent; it would fail in the worker instead
    bound = t(app, "whoami")
    assert bound.delay() is not None  # ``self`` is not a parameter the caller passes


def test_a_soft_limit_above_the_hard_limit_is_refused(app: Celery) -> None:
    add = t(app, "add")
    with pytest.raises(ValueError, match="soft_time_limit=10 is greater than time_limit=5"):
        add.apply_async((1, 2), soft_time_limit=10, time_limit=5)
    limited = app.task(name="limited", soft_time_limit=30, time_limit=10)(lambda: None)
    with pytest.raises(ValueError, match="soft_time_limit must be less than or equal"):
        limited.delay()


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((), {}),
        ((1,), {}),
        ((1, 2, 3, 4), {}),
        ((1,), {"a": 2}),
        ((1, 2), {"b": 3}),
        ((1, 2), {"c": 3, "zz": 1}),
        ((1, 2), {"c": 3}),
        ((1, 2, 3), {"c": 1}),
        ((), {"b": 2, "c": 1}),
    ],
)
def test_the_fast_argument_check_agrees_with_inspect(
    app: Celery, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    def f(a: int, /, b: int, *rest: int, c: int, d: int = 0) -> None: ...

    def g(a: int, b: int = 0, **extra: int) -> None: ...

    for fn in (f, g):
        task = app.task(name=f"check_{fn.__name__}")(fn)
        try:
            inspect.signature(fn).bind(*args, **kwargs)
        except TypeError:
            with pytest.raises(TypeError, match="typing=False"):
                task.check_arguments(args, kwargs)
        else:
            task.check_arguments(args, kwargs)


@pytest.mark.parametrize("on_header", [False, True])
def test_chord_link_error_reaches_the_header_as_celerys_setting_says(
    app: Celery, on_header: bool
) -> None:
    app.conf.task_allow_error_cb_on_chord_header = on_header
    add, boom, old_errback = t(app, "add"), t(app, "boom"), t(app, "old_errback")
    nested = chord([boom.s()], t(app, "xsum").s())
    sig = chord([boom.s(), add.s(1, 1), nested], t(app, "xsum").s())
    sig.link_error(old_errback.s())

    # Then the body and the nested chord always get it; header tasks only with the setting
    assert sig.body.options["link_error"] == [old_errback.s()]
    assert nested.body.options["link_error"] == [old_errback.s()]
    header_links = [task.options.get("link_error") for task in sig.tasks[:2]]
    assert header_links == ([[old_errback.si()]] * 2 if on_header else [None, None])


def test_a_chain_as_the_header_gives_its_steps_as_members_and_sizes_count_as_celery(
    app: Celery,
) -> None:
    add, xsum = t(app, "add"), t(app, "xsum")
    # Celery's _maybe_group: a chain given as the header is unrolled into parallel members
    from_chain = chord(chain(add.si(1, 1), add.si(2, 2), add.si(3, 3)), xsum.s())
    assert len(from_chain.tasks) == 3
    result = from_chain()
    drain(app)
    assert result.get(timeout=1) == 12
    # Celery's test_chord_size_* cases
    assert chord([add.s()] * 42).__length_hint__() == 42
    assert chord([chain([add.s()] * 42)]).__length_hint__() == 1
    assert chord(group([group([add.s()] * 4) | add.s()] * 2), add.s()).__length_hint__() == 2
