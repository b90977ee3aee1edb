"""Results: AsyncResult and GroupResult over the in-process memory backend."""

from __future__ import annotations

import asyncio
import builtins
from datetime import UTC, datetime
from typing import Any

import pytest

import chard.exceptions
from chard import Celery, Task, states
from chard.backends.base import ResultBackend
from chard.exceptions import RemoteTaskError, ResultTimeout, TaskRevokedError
from chard.execution.trace import trace_task
from chard.protocol import serializers
from chard.result import AsyncResult, GroupResult
from chard.task import Context


class Boom(Exception):
    """A task failure."""


@pytest.fixture
def backend(app: Celery) -> ResultBackend:
    found = app.backend
    assert found is not None
    return found


# -- state --------------------------------------------------------------------------------------


def test_an_unknown_id_is_pending(app: Celery) -> None:
    result = app.AsyncResult("never-sent")

    assert result.state == result.status == states.PENDING
    assert result.result is None
    assert result.info is None
    assert result.traceback is None
    assert result.date_done is None
    assert not result.ready()
    assert not result.successful()
    assert not result.failed()
    assert result.exists() is False


@pytest.mark.parametrize(
    ("state", "ready", "successful", "failed"),
    [
        (states.RECEIVED, False, False, False),
        (states.STARTED, False, False, False),
        ("PROGRESS", False, False, False),
        (states.SUCCESS, True, True, False),
        (states.FAILURE, True, False, True),
        (states.REVOKED, True, False, False),
    ],
)
def test_state_predicates(
    app: Celery,
    backend: ResultBackend,
    state: str,
    ready: bool,
    successful: bool,
    failed: bool,
) -> None:
    value: Any = Boom("x") if state in states.EXCEPTION_STATES else {"k": 1}
    backend.store_result("t", value, state)

    result = app.AsyncResult("t")

    assert result.state == state
    assert result.ready() is ready
    assert result.successful() is successful
    assert result.failed() is failed
    assert result.exists() is True


def test_success_value_and_date_done(app: Celery, backend: ResultBackend) -> None:
    before = datetime.now(UTC)
    backend.store_result("ok", {"answer": 42}, states.SUCCESS)
    after = datetime.now(UTC)

    result = app.AsyncResult("ok")

    assert result.get(timeout=1) == {"answer": 42}
    assert result.result == {"answer": 42}
    assert result.date_done is not None
    assert before <= result.date_done <= after


def test_a_naive_date_done_from_an_old_celery_is_utc(app: Celery, backend: ResultBackend) -> None:
    # Regression: Celery < 5 stored naive UTC times; date_done promises aware UTC.
    meta = backend.encode_meta("old", 1, states.SUCCESS)
    meta["date_done"] = "2021-06-01T12:00:00.000001"
    backend._set(backend.task_key("old"), serializers.json_dumps(meta), None)

    assert app.AsyncResult("old").date_done == datetime(2021, 6, 1, 12, 0, 0, 1, tzinfo=UTC)


def test_custom_state_info_is_the_meta(app: Celery, backend: ResultBackend) -> None:
    backend.store_result("p", {"done": 5}, "PROGRESS")

    result = app.AsyncResult("p")

    assert result.state == "PROGRESS"
    assert result.info == {"done": 5}


# -- get --------------------------------------------------------------------------------------


def test_get_reraises_the_original_exception_type(app: Celery, backend: ResultBackend) -> None:
    backend.store_result("bad", Boom("broken", 2), states.FAILURE, "Traceback ...\nBoom")

    result = app.AsyncResult("bad")

    with pytest.raises(Boom) as info:
        result.get(timeout=1)
    assert info.value.args == ("broken", 2)
    assert isinstance(result.result, Boom)
    assert result.traceback == "Traceback ...\nBoom"


def test_get_without_propagate_returns_the_exception(app: Celery, backend: ResultBackend) -> None:
    backend.store_result("bad", ValueError("nope"), states.FAILURE)

    value = app.AsyncResult("bad").get(timeout=1, propagate=False)

    assert isinstance(value, ValueError)
    assert value.args == ("nope",)


def test_revoked_raises_task_revoked_error(app: Celery, backend: ResultBackend) -> None:
    backend.store_result("rev", TaskRevokedError("revoked by user"), states.REVOKED)

    with pytest.raises(TaskRevokedError, match="revoked by user"):
        app.AsyncResult("rev").get(timeout=1)


def test_get_times_out_on_a_task_that_never_ran(app: Celery) -> None:
    result = app.AsyncResult("never-ran")

    with pytest.raises(ResultTimeout) as info:
        result.get(timeout=0.05)

    assert isinstance(info.value, builtins.TimeoutError)
    assert isinstance(info.value, chard.exceptions.TimeoutError)
    assert "'never-ran' not ready after 0.05s" in str(info.value)


def test_the_builtin_timeout_error_catches_it(app: Celery) -> None:
    with pytest.raises(TimeoutError):
        app.AsyncResult("never-ran").wait(timeout=0.01)


def test_remote_exception_of_an_unknown_module(app: Celery, backend: ResultBackend) -> None:
    stored = {
        "exc_type": "PaymentDeclined",
        "exc_message": ["card expired", 402],
        "exc_module": "billing_service_not_installed_here.errors",
    }
    backend.store_result("remote", stored, states.FAILURE, "Traceback (remote)\nPaymentDeclined")

    with pytest.raises(RemoteTaskError) as info:
        app.AsyncResult("remote").get(timeout=1)

    error = info.value
    assert error.exc_module == "billing_service_not_installed_here.errors"
    assert error.exc_type == "PaymentDeclined"
    assert error.remote_traceback == "Traceback (remote)\nPaymentDeclined"
    assert "billing_service_not_installed_here.errors.PaymentDeclined" in str(error)
    assert "card expired" in str(error)


def test_celerys_captured_failure_meta_decodes(app: Celery, backend: ResultBackend) -> None:
    task_id = "bbbbbbbb-0000-0000-0000-000000000002"
    meta: dict[str, Any] = {
        "status": "FAILURE",
        "result": {
            "exc_type": "ValueError",
            "exc_message": ["bad input"],
            "exc_module": "builtins",
        },
        "traceback": "Traceback (most recent call last):\n ... ValueError: bad input\n",
        "children": [],
        "date_done": "2026-11-21T05:26:17.594654+00:00",
        "task_id": task_id,
    }
    key = backend.task_key(task_id)
    backend._set(key, serializers.json_dumps(meta), None)

    result = app.AsyncResult(task_id)

    with pytest.raises(ValueError, match="bad input"):
        result.get(timeout=1)
    assert result.date_done == datetime(2026, 11, 21, 5, 26, 17, 594654, tzinfo=UTC)


def test_a_failed_parent_is_raised_first(app: Celery, backend: ResultBackend) -> None:
    backend.store_result("parent", Boom("upstream"), states.FAILURE)
    backend.store_result("child", 1, states.SUCCESS)
    child: AsyncResult[int] = AsyncResult("child", app=app, parent=app.AsyncResult("parent"))

    with pytest.raises(Boom, match="upstream"):
        child.get(timeout=1)
    assert child.get(timeout=1, follow_parents=False) == 1


def test_a_ready_result_is_read_once(app: Celery, backend: ResultBackend) -> None:
    backend.store_result("once", 1, states.SUCCESS)
    result = app.AsyncResult("once")
    assert result.get(timeout=1) == 1

    backend.forget("once")  # gone from the store, but this handle already has it

    assert result.get(timeout=1) == 1
    assert result.state == states.SUCCESS


def test_forget_deletes_the_result(app: Celery, backend: ResultBackend) -> None:
    backend.store_result("gone", 1, states.SUCCESS)
    result = app.AsyncResult("gone")
    assert result.get(timeout=1) == 1

    result.forget()

    assert result.state == states.PENDING
    assert result.exists() is False
    assert app.AsyncResult("gone").state == states.PENDING


def test_get_inside_a_running_task_is_refused(app: Celery, backend: ResultBackend) -> None:
    backend.store_result("other", 7, states.SUCCESS)

    @app.task
    def waits() -> Any:
        return app.AsyncResult("other").get(timeout=1)

    @app.task
    def waits_anyway() -> Any:
        return app.AsyncResult("other").get(timeout=1, disable_sync_subtasks=False)

    worker = Context(id="w", is_eager=False, called_directly=False)
    refused = trace_task(waits, worker)
    allowed = trace_task(waits_anyway, worker)

    assert refused.state == states.FAILURE
    assert isinstance(refused.value, RuntimeError)
    assert "never call result.get() inside a task" in str(refused.value)
    assert allowed.value == 7


def test_get_inside_an_eager_task_is_allowed(app: Celery, backend: ResultBackend) -> None:
    backend.store_result("other", 7, states.SUCCESS)

    @app.task
    def waits() -> Any:
        return app.AsyncResult("other").get(timeout=1)

    assert waits.apply().get() == 7


def test_get_of_an_eagerly_stored_task(app: Celery) -> None:
    app.conf.task_store_eager_result = True

    @app.task(bind=True)
    def echo(self: Task[Any, Any], x: int) -> int:
        return x

    result = echo.apply((3,))

    assert app.AsyncResult(result.id).get(timeout=1) == 3


def test_aget_awaits_without_blocking_the_loop(app: Celery, backend: ResultBackend) -> None:
    async def main() -> tuple[Any, Any]:
        pending = asyncio.ensure_future(app.AsyncResult("later").aget(timeout=5))
        await asyncio.sleep(0)  # the loop is free while aget waits
        backend.store_result("later", "value", states.SUCCESS)
        return await pending, await app.AsyncResult("later").aget()

    assert asyncio.run(main()) == ("value", "value")


def test_aget_times_out_and_propagates(app: Celery, backend: ResultBackend) -> None:
    backend.store_result("bad", Boom("async"), states.FAILURE)

    async def main() -> Any:
        with pytest.raises(ResultTimeout):
            await app.AsyncResult("never").aget(timeout=0.05)
        with pytest.raises(Boom):
            await app.AsyncResult("bad").aget()
        return await app.AsyncResult("bad").aget(propagate=False)

    assert isinstance(asyncio.run(main()), Boom)


def test_identity(app: Celery) -> None:
    result = app.AsyncResult("abc")

    assert result == app.AsyncResult("abc")
    assert result == "abc"
    assert result != app.AsyncResult("xyz")
    assert hash(result) == hash("abc")
    assert str(result) == "abc"
    assert repr(result) == "<AsyncResult: abc>"
    assert {result, app.AsyncResult("abc")} == {result}


# -- GroupResult --------------------------------------------------------------------------------


def make_group(app: Celery, ids: list[str], group_id: str | None = "g1") -> GroupResult:
    return app.GroupResult(group_id or "", [app.AsyncResult(i) for i in ids])


def test_group_progress_and_values(app: Celery, backend: ResultBackend) -> None:
    group = make_group(app, ["a", "b", "c"])
    backend.store_result("a", 1, states.SUCCESS)
    backend.store_result("b", 2, states.SUCCESS)

    assert group.completed_count() == 2
    assert not group.ready()
    assert group.waiting()
    assert not group.failed()

    backend.store_result("c", 3, states.SUCCESS)

    assert group.ready()
    assert group.successful()
    assert group.completed_count() == 3
    assert group.get(timeout=1) == [1, 2, 3]
    assert group.join(timeout=1) == [1, 2, 3]


def test_group_values_keep_the_members_order(app: Celery, backend: ResultBackend) -> None:
    group = make_group(app, ["z", "y", "x"])
    for task_id, value in [("x", "X"), ("y", "Y"), ("z", "Z")]:
        backend.store_result(task_id, value, states.SUCCESS)

    assert group.get(timeout=1) == ["Z", "Y", "X"]


def test_group_failure(app: Celery, backend: ResultBackend) -> None:
    group = make_group(app, ["a", "b"])
    backend.store_result("a", 1, states.SUCCESS)
    backend.store_result("b", Boom("member"), states.FAILURE)

    assert group.ready()
    assert group.failed()
    assert not group.successful()
    assert group.completed_count() == 1
    with pytest.raises(Boom, match="member"):
        group.get(timeout=1)
    values = group.get(timeout=1, propagate=False)
    assert values[0] == 1
    assert isinstance(values[1], Boom)


def test_group_get_times_out(app: Celery, backend: ResultBackend) -> None:
    group = make_group(app, ["a", "missing"])
    backend.store_result("a", 1, states.SUCCESS)

    with pytest.raises(ResultTimeout, match="1 of 2 pending"):
        group.get(timeout=0.05)


def test_group_aget(app: Celery, backend: ResultBackend) -> None:
    group = make_group(app, ["a", "b"])
    backend.store_result("a", 1, states.SUCCESS)
    backend.store_result("b", 2, states.SUCCESS)

    assert asyncio.run(group.aget(timeout=1)) == [1, 2]


def test_group_save_restore_delete(app: Celery, backend: ResultBackend) -> None:
    group = make_group(app, ["a", "b"], group_id="saved")
    backend.store_result("a", "A", states.SUCCESS)
    backend.store_result("b", "B", states.SUCCESS)

    assert group.save() is group
    restored = GroupResult.restore("saved", app=app)

    assert restored is not None
    assert restored.id == "saved"
    assert [r.id for r in restored] == ["a", "b"]
    assert restored.get(timeout=1) == ["A", "B"]

    group.delete()
    assert GroupResult.restore("saved", app=app) is None


def test_restore_of_an_unknown_group_is_none(app: Celery) -> None:
    assert GroupResult.restore("never-saved", app=app) is None


def test_group_without_id_cannot_be_saved(app: Celery) -> None:
    group = GroupResult(None, [app.AsyncResult("a")], app=app)

    with pytest.raises(ValueError, match="without an id"):
        group.save()


def test_group_forget_forgets_every_member(app: Celery, backend: ResultBackend) -> None:
    group = make_group(app, ["a", "b"])
    backend.store_result("a", 1, states.SUCCESS)
    backend.store_result("b", 2, states.SUCCESS)

    group.forget()

    assert [r.state for r in group] == [states.PENDING, states.PENDING]


def test_group_is_a_sequence_of_results(app: Celery) -> None:
    group = make_group(app, ["a", "b"])

    assert len(group) == 2
    assert group[1].id == "b"
    assert group.children == group.results
    assert [r.id for r in group] == ["a", "b"]
    assert repr(group) == "<GroupResult: g1 [a, b]>"


def test_get_inside_a_running_task_is_refused_for_groups(app: Celery) -> None:
    group = make_group(app, ["a"])

    @app.task
    def waits() -> Any:
        return group.get(timeout=1)

    outcome = trace_task(waits, Context(id="w", is_eager=False, called_directly=False))

    assert isinstance(outcome.value, RuntimeError)
