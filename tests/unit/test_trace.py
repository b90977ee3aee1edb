"""The trace path, driven eagerly: states, storing, propagation, hooks, signals, async bodies."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from chard import Celery, Task, signals, states
from chard.exceptions import EncodeError, Ignore, Reject
from chard.result import EagerResult


class Boom(Exception):
    """A task failure."""


@pytest.fixture
def received() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """Record task signals as (signal name, keyword arguments)."""
    calls: list[tuple[str, dict[str, Any]]] = []
    watched = [
        signals.task_prerun,
        signals.task_postrun,
        signals.task_success,
        signals.task_failure,
        signals.task_retry,
    ]
    receivers = []
    for signal in watched:

        def receiver(sender: Any = None, _name: str = signal.name, **kwargs: Any) -> None:
            kwargs.pop("signal", None)
            calls.append((_name, {"sender": sender, **kwargs}))

        signal.connect(receiver)
        receivers.append((signal, receiver))
    yield calls
    for signal, receiver in receivers:
        signal.disconnect(receiver)


# -- outcomes -----------------------------------------------------------------------------------


def test_apply_returns_a_ready_eager_result(app: Celery) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    result = add.apply((2, 3))

    assert isinstance(result, EagerResult)
    assert result.get() == 5
    assert result.state == states.SUCCESS
    assert result.ready()
    assert result.successful()
    assert not result.failed()
    assert result.task_name == add.name
    assert repr(result) == f"<EagerResult: {result.id}>"


def test_a_failure_is_captured_in_the_result(app: Celery) -> None:
    @app.task
    def fail() -> None:
        raise Boom("bad")

    result = fail.apply()

    assert result.state == states.FAILURE
    assert result.failed()
    assert isinstance(result.result, Boom)
    assert "Boom: bad" in (result.traceback or "")
    with pytest.raises(Boom, match="bad"):
        result.get()
    returned = result.get(propagate=False)
    assert isinstance(returned, Boom)


def test_task_eager_propagates_raises_at_apply(app: Celery) -> None:
    app.conf.task_eager_propagates = True

    @app.task
    def fail() -> None:
        raise Boom("now")

    with pytest.raises(Boom, match="now"):
        fail.apply()


def test_always_eager_runs_apply_async_inline(app: Celery) -> None:
    app.conf.task_always_eager = True

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    result = add.delay(4, 4)

    assert isinstance(result, EagerResult)
    assert result.get() == 8
    assert app.broker.queue_size("celery") == 0


def test_always_eager_with_propagation(app: Celery) -> None:
    app.conf.update(task_always_eager=True, task_eager_propagates=True)

    @app.task
    def fail() -> None:
        raise Boom("eager")

    with pytest.raises(Boom):
        fail.delay()


def test_ignore_drops_the_outcome(app: Celery) -> None:
    @app.task
    def skipped() -> None:
        raise Ignore()

    result = skipped.apply()

    assert result.state == states.IGNORED
    assert result.get() is None


def test_reject_is_recorded_with_its_reason(app: Celery) -> None:
    @app.task
    def refused() -> None:
        raise Reject("no thanks", requeue=False)

    result = refused.apply()

    assert result.state == states.REJECTED
    assert result.result == "no thanks"


def test_async_def_task_returns_the_awaited_value(app: Celery) -> None:
    @app.task(bind=True)
    async def fetch(self: Task[Any, Any], x: int) -> tuple[int, str | None]:
        await asyncio.sleep(0)
        return x * 2, self.request.id

    result = fetch.apply((21,), task_id="async-id")

    assert fetch.is_async
    assert result.get() == (42, "async-id")


def test_async_def_task_failure(app: Celery) -> None:
    @app.task
    async def fail() -> None:
        raise Boom("async")

    with pytest.raises(Boom, match="async"):
        fail.apply().get()


def test_async_def_task_applied_from_running_event_loop(app: Celery) -> None:
    # Regression: apply() of an async task from async code (FastAPI handler, async test
    # with task_always_eager) failed with "Cannot run the event loop while another loop
    # is running".
    @app.task(bind=True)
    async def double(self: Task[Any, Any], x: int) -> tuple[int, str | None]:
        await asyncio.sleep(0)
        return x * 2, self.request.id

    async def caller() -> Any:
        return double.apply((5,), task_id="in-loop").get()

    assert asyncio.run(caller()) == (10, "in-loop")


def test_async_def_class_task(app: Celery) -> None:
    class Fetch(Task[Any, Any]):
        name = "fetch.async"

        async def run(self, x: int) -> int:
            await asyncio.sleep(0)
            return x + 1

    task = app.register_task(Fetch)

    assert task.is_async
    assert task.apply((1,)).get() == 2


def test_eager_links_run_inline(app: Celery) -> None:
    # Regression: apply(link=...) and apply_async(link=...) under task_always_eager
    # dropped the callbacks silently; Celery runs them (Signature.apply already did).
    seen: list[tuple[str, Any]] = []

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def fail() -> None:
        raise Boom("x")

    @app.task
    def on_ok(value: Any) -> None:
        seen.append(("ok", value))

    @app.task
    def on_error(task_id: str) -> None:
        seen.append(("error", task_id))

    add.apply((1, 2), link=on_ok.s())
    app.conf.task_always_eager = True
    add.apply_async((2, 2), link=[on_ok.s(), on_ok.s()], link_error=on_error.s())
    failed = fail.apply_async(link=on_ok.s(), link_error=on_error.s())

    assert seen == [("ok", 3), ("ok", 4), ("ok", 4), ("error", failed.id)]


# -- storing --------------------------------------------------------------------------------


def test_eager_results_are_not_stored_by_default(app: Celery) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    result = add.apply((1, 1))

    assert app.AsyncResult(result.id).state == states.PENDING


def test_task_store_eager_result(app: Celery) -> None:
    app.conf.task_store_eager_result = True

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def fail() -> None:
        raise Boom("stored")

    ok, bad = add.apply((1, 1)), fail.apply()

    assert app.AsyncResult(ok.id).get(timeout=1) == 2
    stored = app.AsyncResult(bad.id)
    assert stored.state == states.FAILURE
    with pytest.raises(Boom, match="stored"):
        stored.get(timeout=1)
    assert "Boom: stored" in (stored.traceback or "")


@pytest.mark.parametrize(
    ("task_option", "conf_value", "stored"),
    [(None, False, True), (True, False, False), (None, True, False), (False, True, True)],
)
def test_ignore_result_task_option_beats_the_setting(
    app: Celery, task_option: bool | None, conf_value: bool, stored: bool
) -> None:
    app.conf.update(task_store_eager_result=True, task_ignore_result=conf_value)

    @app.task(ignore_result=task_option)
    def job() -> int:
        return 1

    result = job.apply()

    assert app.AsyncResult(result.id).exists() is stored


def test_retry_state_is_stored_between_eager_attempts(app: Celery) -> None:
    app.conf.task_store_eager_result = True
    seen: list[str] = []

    @app.task(bind=True)
    def flaky(self: Task[Any, Any]) -> str:
        seen.append(app.AsyncResult(self.request.id or "").state)
        if len(seen) < 2:
            raise self.retry(exc=Boom("again"), countdown=0)
        return "ok"

    result = flaky.apply()

    assert seen == [states.PENDING, states.RETRY]
    assert app.AsyncResult(result.id).get(timeout=1) == "ok"


def test_result_extended_stores_name_and_arguments(app: Celery) -> None:
    app.conf.update(task_store_eager_result=True, result_extended=True)

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    result = add.apply((1, 2), parent_id="p")

    backend = app.backend
    assert backend is not None
    meta = backend.get_task_meta(result.id)
    assert meta["name"] == add.name
    assert meta["args"] == [1, 2]
    assert meta["kwargs"] == {}
    assert meta["worker"] == "eager"
    assert meta["parent_id"] == "p"
    assert app.AsyncResult(result.id).name == add.name


# -- hooks and signals ---------------------------------------------------------------------------


class Hooked(Task[Any, Any]):
    """Records every hook call on the class (one list per test via the fixture)."""

    calls: list[tuple[Any, ...]] = []

    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        self.calls.append(("before_start", task_id, args, kwargs))

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        self.calls.append(("on_success", retval, task_id, args, kwargs))

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        self.calls.append(("on_failure", type(exc), task_id, args, kwargs, "Boom" in einfo))

    def on_retry(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        self.calls.append(("on_retry", type(exc), task_id))

    def after_return(
        self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        self.calls.append(("after_return", status, retval, task_id))


@pytest.fixture
def hook_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(Hooked, "calls", calls)
    return calls


def test_hooks_on_success(app: Celery, hook_calls: list[tuple[Any, ...]]) -> None:
    @app.task(base=Hooked)
    def add(x: int, y: int = 0) -> int:
        return x + y

    add.apply((1,), {"y": 2}, task_id="s-1")

    assert hook_calls == [
        ("before_start", "s-1", (1,), {"y": 2}),
        ("on_success", 3, "s-1", (1,), {"y": 2}),
        ("after_return", states.SUCCESS, 3, "s-1"),
    ]


def test_hooks_on_failure(app: Celery, hook_calls: list[tuple[Any, ...]]) -> None:
    @app.task(base=Hooked)
    def fail(x: int) -> None:
        raise Boom(x)

    fail.apply((7,), task_id="f-1")

    assert hook_calls[0] == ("before_start", "f-1", (7,), {})
    assert hook_calls[1] == ("on_failure", Boom, "f-1", (7,), {}, True)
    assert hook_calls[2][:2] == ("after_return", states.FAILURE)
    assert isinstance(hook_calls[2][2], Boom)
    assert len(hook_calls) == 3


def test_hooks_on_retry(app: Celery, hook_calls: list[tuple[Any, ...]]) -> None:
    attempts: list[int] = []

    @app.task(base=Hooked, bind=True)
    def flaky(self: Task[Any, Any]) -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise self.retry(exc=Boom("once"), countdown=0)
        return "ok"

    flaky.apply(task_id="r-1")

    names = [call[0] for call in hook_calls]
    assert names == [
        "before_start",
        "on_retry",
        "after_return",
        "before_start",
        "on_success",
        "after_return",
    ]
    assert hook_calls[1] == ("on_retry", Boom, "r-1")
    assert hook_calls[2][:2] == ("after_return", states.RETRY)


def test_signals_on_success(app: Celery, received: list[tuple[str, dict[str, Any]]]) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    add.apply((1, 2), task_id="sig-1")

    assert [name for name, _ in received] == ["task_prerun", "task_success", "task_postrun"]
    prerun, success, postrun = (kwargs for _, kwargs in received)
    assert prerun == {"sender": add, "task_id": "sig-1", "task": add, "args": (1, 2), "kwargs": {}}
    assert success == {"sender": add, "result": 3}
    assert postrun == {
        "sender": add,
        "task_id": "sig-1",
        "task": add,
        "args": (1, 2),
        "kwargs": {},
        "retval": 3,
        "state": states.SUCCESS,
    }


def test_signals_on_failure(app: Celery, received: list[tuple[str, dict[str, Any]]]) -> None:
    @app.task
    def fail() -> None:
        raise Boom("signal")

    fail.apply(task_id="sig-2")

    assert [name for name, _ in received] == ["task_prerun", "task_failure", "task_postrun"]
    failure = received[1][1]
    assert failure["sender"] is fail
    assert failure["task_id"] == "sig-2"
    assert isinstance(failure["exception"], Boom)
    assert "Boom: signal" in failure["traceback"]
    assert received[2][1]["state"] == states.FAILURE


def test_signals_on_retry(app: Celery, received: list[tuple[str, dict[str, Any]]]) -> None:
    @app.task(bind=True)
    def flaky(self: Task[Any, Any]) -> str:
        if self.request.retries == 0:
            raise self.retry(countdown=0)
        return "ok"

    flaky.apply()

    assert [name for name, _ in received] == [
        "task_prerun",
        "task_retry",
        "task_postrun",
        "task_prerun",
        "task_success",
        "task_postrun",
    ]
    assert received[1][1]["request"].retries == 0


def test_a_raising_signal_receiver_does_not_fail_the_task(app: Celery) -> None:
    def broken(**kwargs: Any) -> None:
        raise RuntimeError("receiver bug")

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    signals.task_prerun.connect(broken)
    try:
        result = add.apply((1, 1))
    finally:
        signals.task_prerun.disconnect(broken)

    assert result.get() == 2


def test_a_signal_connected_for_one_sender_only(app: Celery) -> None:
    seen: list[Any] = []

    @app.task
    def watched() -> None:
        """Watched."""

    @app.task
    def other() -> None:
        """Not watched."""

    def on_success(sender: Any = None, **kwargs: Any) -> None:
        seen.append(sender)

    signals.task_success.connect(on_success, sender=watched)
    try:
        watched.apply()
        other.apply()
    finally:
        signals.task_success.disconnect(on_success, sender=watched)

    assert seen == [watched]


def test_the_request_is_gone_after_the_task(app: Celery) -> None:
    @app.task(bind=True)
    def whoami(self: Task[Any, Any]) -> str | None:
        return self.request.id

    whoami.apply()

    assert whoami.request.id is None


def test_an_unencodable_return_value_is_failure_with_encode_error_once(
    app: Celery, received: list[tuple[str, dict[str, Any]]]
) -> None:
    # Given a task whose value the JSON result serializer cannot encode, results stored
    app.conf.task_store_eager_result = True

    @app.task
    def junk() -> object:
        return object()

    # When it runs
    result = junk.apply()

    # Then it is FAILURE with an EncodeError naming the task and the type, stored too
    assert result.state == states.FAILURE
    assert isinstance(result.result, EncodeError)
    assert f"{junk.name!r}" in str(result.result)
    assert "'object'" in str(result.result)
    assert app.backend is not None
    assert app.backend.get_task_meta(result.id)["status"] == states.FAILURE
    # ... and task_failure fired once, task_success never
    names = [name for name, _ in received]
    assert names.count("task_failure") == 1
    assert "task_success" not in names
