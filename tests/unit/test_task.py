"""Tasks: direct calls, self.request, retry and backoff, update_state.

Worker-side behaviour is driven through ``trace_task`` with a non-eager request (what
the worker passes) and observed on the memory broker; eager behaviour through apply().
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from chard import Celery, Task, signals, states
from chard.exceptions import MaxRetriesExceededError, Retry
from chard.execution.trace import trace_task
from chard.protocol.message import TaskMessage
from chard.task import Context, exponential_backoff


def worker_request(task_id: str = "task-1", **fields: Any) -> Context:
    """The request a worker builds for a delivered message (not eager)."""
    return Context(id=task_id, is_eager=False, called_directly=False, hostname="w1@h", **fields)


def published(app: Celery, queue: str = "celery") -> list[TaskMessage]:
    """Every message in ``queue``, due or not, decoded (the broker is read without waiting)."""
    captured: list[TaskMessage] = []
    deliveries = app.broker.fetch([queue], limit=100, timeout=0)
    for delivery in deliveries:
        captured.append(TaskMessage.from_wire(delivery.body, app.accept_content))
        delivery.ack()
    return captured


class PublishedHeaders:
    """Collect the headers of every message published while the block runs."""

    def __init__(self) -> None:
        self.headers: list[dict[str, Any]] = []

    def __enter__(self) -> list[dict[str, Any]]:
        signals.before_task_publish.connect(self._record)
        return self.headers

    def __exit__(self, *exc: object) -> None:
        signals.before_task_publish.disconnect(self._record)

    def _record(self, sender: Any = None, headers: Any = None, **kwargs: Any) -> None:
        self.headers.append(headers)


# -- calling ----------------------------------------------------------------------------------


def test_calling_a_task_runs_it_inline(app: Celery) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    assert add(2, 3) == 5
    assert add.run(2, y=4) == 6
    assert app.broker.queue_size("celery") == 0


def test_a_direct_call_has_an_empty_request(app: Celery) -> None:
    @app.task(bind=True)
    def whoami(self: Task[Any, Any]) -> Context:
        return self.request

    request = whoami()

    assert request.id is None
    assert request.called_directly is True
    assert request.is_eager is False


def test_bound_request_fields_in_eager_apply(app: Celery) -> None:
    seen: list[Context] = []

    @app.task(bind=True)
    def whoami(self: Task[Any, Any], x: int, y: int = 0) -> None:
        seen.append(self.request)

    result = whoami.apply((1,), {"y": 2}, task_id="my-id", parent_id="p-1", queue="q")

    (request,) = seen
    assert result.id == "my-id"
    assert request.id == "my-id"
    assert request.args == (1,)
    assert request.kwargs == {"y": 2}
    assert request.retries == 0
    assert request.is_eager is True
    assert request.called_directly is False
    assert request.hostname == "eager"
    assert request.root_id == "my-id"
    assert request.parent_id == "p-1"
    assert request.delivery_info == {"routing_key": "q", "priority": None}
    assert request.get("retries") == 0
    assert request.get("no_such_field", "default") == "default"


def test_eager_apply_generates_ids(app: Celery) -> None:
    @app.task(bind=True)
    def whoami(self: Task[Any, Any]) -> tuple[str | None, str | None]:
        return self.request.id, self.request.root_id

    result = whoami.apply()

    assert result.get() == (result.id, result.id)
    assert len(result.id) == 36


def test_a_task_called_directly_inside_another_sees_its_own_arguments(app: Celery) -> None:
    # Regression: a nested direct call saw the *outer* task's request, so self.request.args
    # were wrong and self.retry() re-sent the inner task with the outer task's id and args.
    @app.task(bind=True)
    def inner(self: Task[Any, Any], n: int) -> tuple[Any, ...]:
        with pytest.raises(RuntimeError, match="called directly"):
            self.retry(countdown=1)
        return self.request.args, self.request.called_directly

    @app.task
    def outer(x: str) -> Any:
        return inner(5)

    outcome = trace_task(outer, worker_request(args=("outer-arg",)))

    assert outcome.state == states.SUCCESS
    assert outcome.value == ((5,), True)
    assert published(app) == []  # the inner retry sent nothing


# -- retry --------------------------------------------------------------------------------------


def test_eager_retry_reruns_until_success(app: Celery) -> None:
    attempts: list[int] = []

    @app.task(bind=True)
    def flaky(self: Task[Any, Any]) -> str:
        attempts.append(self.request.retries)
        if len(attempts) < 3:
            raise self.retry(countdown=60)  # eager: no waiting
        return "done"

    result = flaky.apply()

    assert result.get() == "done"
    assert result.state == states.SUCCESS
    assert attempts == [0, 1, 2]


def test_eager_retry_uses_new_arguments(app: Celery) -> None:
    # Regression: in eager mode retry(args=...) re-ran with the old arguments
    # (Celery re-applies the retry signature, with the new ones).
    seen: list[int] = []

    @app.task(bind=True)
    def count(self: Task[Any, Any], n: int) -> int:
        seen.append(n)
        if n < 3:
            raise self.retry(args=(n + 1,), countdown=0)
        return n

    assert count.apply((0,)).get() == 3
    assert seen == [0, 1, 2, 3]


def test_max_retries_exceeded(app: Celery) -> None:
    attempts: list[int] = []

    @app.task(bind=True, max_retries=2)
    def hopeless(self: Task[Any, Any]) -> None:
        attempts.append(self.request.retries)
        raise self.retry(countdown=0)

    result = hopeless.apply()

    assert attempts == [0, 1, 2]
    assert result.state == states.FAILURE
    with pytest.raises(MaxRetriesExceededError, match=r"max_retries=2 reached"):
        result.get()


def test_max_retries_exceeded_raises_the_given_exception(app: Celery) -> None:
    @app.task(bind=True, max_retries=1)
    def hopeless(self: Task[Any, Any]) -> None:
        try:
            raise KeyError("gone")
        except KeyError as exc:
            raise self.retry(exc=exc, countdown=0) from exc

    result = hopeless.apply()

    assert result.state == states.FAILURE
    with pytest.raises(KeyError, match="gone"):
        result.get()


def test_retry_max_retries_argument_overrides_the_task(app: Celery) -> None:
    attempts: list[int] = []

    @app.task(bind=True, max_retries=10)
    def limited(self: Task[Any, Any]) -> None:
        attempts.append(self.request.retries)
        raise self.retry(countdown=0, max_retries=1)

    assert limited.apply().failed()
    assert attempts == [0, 1]


def test_max_retries_none_retries_forever(app: Celery) -> None:
    attempts: list[int] = []

    @app.task(bind=True, max_retries=None)
    def patient(self: Task[Any, Any]) -> int:
        attempts.append(1)
        if len(attempts) < 20:
            raise self.retry(countdown=0)
        return len(attempts)

    assert patient.apply().get() == 20


def test_retry_of_a_direct_call_raises_the_exception_or_refuses(app: Celery) -> None:
    @app.task(bind=True)
    def direct(self: Task[Any, Any], exc: BaseException | None) -> None:
        raise self.retry(exc=exc)

    with pytest.raises(ValueError, match="boom"):
        direct(ValueError("boom"))
    with pytest.raises(RuntimeError, match="called directly cannot be retried"):
        direct(None)


def test_retry_in_a_worker_republishes_the_same_task(app: Celery) -> None:
    @app.task(bind=True, default_retry_delay=0)
    def flaky(self: Task[Any, Any], x: int) -> None:
        raise self.retry(countdown=0)

    request = worker_request(
        "t-1",
        args=(7,),
        kwargs={},
        retries=1,
        root_id="root",
        parent_id="parent",
        delivery_info={"routing_key": "work"},
        headers={"x-tenant": "acme", "chard_deaths": 1},
    )

    outcome = trace_task(flaky, request)

    assert outcome.state == states.RETRY
    (message,) = published(app, "work")
    assert message.task == flaky.name
    assert message.id == "t-1"
    assert message.args == (7,)
    assert message.retries == 2
    assert message.root_id == "root"
    assert message.parent_id == "parent"
    # User headers travel on; chard's bookkeeping headers are reset.
    assert message.extra_headers == {"x-tenant": "acme"}
    assert app.AsyncResult("t-1").state == states.RETRY


def test_retry_countdown_sets_the_eta_and_default_delay_applies(app: Celery) -> None:
    @app.task(bind=True, default_retry_delay=42)
    def later(self: Task[Any, Any], countdown: float | None) -> None:
        raise self.retry(countdown=countdown)

    before = datetime.now(UTC)
    with PublishedHeaders() as headers:
        trace_task(later, worker_request("a", args=(5,)))
        trace_task(later, worker_request("b", args=(None,)))
    after = datetime.now(UTC)

    explicit, default = (datetime.fromisoformat(h["eta"]) for h in headers)
    assert before + timedelta(seconds=5) <= explicit <= after + timedelta(seconds=5)
    assert before + timedelta(seconds=42) <= default <= after + timedelta(seconds=42)


def test_retry_with_an_eta(app: Celery) -> None:
    eta = datetime(2030, 1, 1, tzinfo=UTC)

    @app.task(bind=True)
    def at(self: Task[Any, Any]) -> None:
        raise self.retry(eta=eta)

    with PublishedHeaders() as headers:
        trace_task(at, worker_request())

    assert datetime.fromisoformat(headers[0]["eta"]) == eta


def test_retry_without_throw_returns_the_retry(app: Celery) -> None:
    @app.task(bind=True)
    def soft(self: Task[Any, Any]) -> bool:
        return isinstance(self.retry(countdown=0, throw=False), Retry)

    outcome = trace_task(soft, worker_request())

    assert outcome.state == states.SUCCESS
    assert outcome.value is True
    assert len(published(app)) == 1


# -- backoff --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("factor", "retries", "maximum", "expected"),
    [
        (1, 0, 600, 1),
        (1, 3, 600, 8),
        (3, 0, 600, 3),
        (3, 4, 600, 48),
        (3, 10, 600, 600),  # capped
        (2, 5, 50, 50),
    ],
)
def test_exponential_backoff_is_celerys(
    factor: float, retries: int, maximum: float, expected: float
) -> None:
    assert exponential_backoff(factor, retries, maximum) == expected


def test_exponential_backoff_with_full_jitter_is_between_zero_and_the_cap() -> None:
    random.seed(1234)
    values = [exponential_backoff(2, 3, 600, full_jitter=True) for _ in range(200)]

    assert all(0 <= v <= 16 for v in values)
    assert all(v == int(v) for v in values)
    assert len(set(values)) > 5  # actually random
    random.seed(1234)
    assert exponential_backoff(2, 3, 600, full_jitter=True) == values[0]


def test_exponential_backoff_jitter_respects_the_maximum() -> None:
    values = [exponential_backoff(10, 10, 30, full_jitter=True) for _ in range(200)]

    assert max(values) <= 30


# -- autoretry_for ------------------------------------------------------------------------------


def test_autoretry_for_retries_listed_exceptions_eagerly(app: Celery) -> None:
    attempts: list[int] = []

    @app.task(bind=True, autoretry_for=(ConnectionError,), retry_kwargs={"countdown": 0})
    def fetch_page(self: Task[Any, Any]) -> str:
        attempts.append(self.request.retries)
        if len(attempts) < 3:
            raise ConnectionError("try again")
        return "page"

    assert fetch_page.apply().get() == "page"
    assert attempts == [0, 1, 2]


def test_autoretry_gives_up_with_the_original_exception(app: Celery) -> None:
    attempts: list[int] = []

    @app.task(autoretry_for=(ConnectionError,), retry_kwargs={"max_retries": 2, "countdown": 0})
    def down() -> None:
        attempts.append(1)
        raise ConnectionError("still down")

    result = down.apply()

    assert len(attempts) == 3
    with pytest.raises(ConnectionError, match="still down"):
        result.get()


def test_autoretry_ignores_other_exceptions(app: Celery) -> None:
    attempts: list[int] = []

    @app.task(autoretry_for=(ConnectionError,))
    def broken() -> None:
        attempts.append(1)
        raise ValueError("bug")

    assert broken.apply().failed()
    assert attempts == [1]


@pytest.mark.parametrize(
    ("backoff", "backoff_max", "retries", "expected"),
    [
        (True, 600, 0, 1),  # True means factor 1
        (True, 600, 3, 8),
        (3, 600, 2, 12),
        (3, 10, 2, 10),  # capped by retry_backoff_max
    ],
)
def test_autoretry_backoff_sets_the_countdown(
    app: Celery, backoff: bool | int, backoff_max: float, retries: int, expected: float
) -> None:
    @app.task(
        autoretry_for=(ConnectionError,),
        max_retries=10,
        retry_backoff=backoff,
        retry_backoff_max=backoff_max,
        retry_jitter=False,
    )
    def down() -> None:
        raise ConnectionError("down")

    before = datetime.now(UTC)
    with PublishedHeaders() as headers:
        outcome = trace_task(down, worker_request(retries=retries))
    after = datetime.now(UTC)

    assert outcome.state == states.RETRY
    eta = datetime.fromisoformat(headers[0]["eta"])
    assert before + timedelta(seconds=expected) <= eta <= after + timedelta(seconds=expected)
    assert headers[0]["retries"] == retries + 1


def test_autoretry_backoff_with_jitter_stays_under_the_cap(app: Celery) -> None:
    @app.task(autoretry_for=(ConnectionError,), retry_backoff=3, retry_jitter=True)
    def down() -> None:
        raise ConnectionError("down")

    before = datetime.now(UTC)
    with PublishedHeaders() as headers:
        for retries in range(20):
            trace_task(down, worker_request(f"t{retries}", retries=2))
    after = datetime.now(UTC)

    etas = [datetime.fromisoformat(h["eta"]) for h in headers]
    assert all(before <= eta <= after + timedelta(seconds=12) for eta in etas)


# -- update_state -------------------------------------------------------------------------------


def test_update_state_stores_a_custom_state(app: Celery) -> None:
    seen: list[tuple[str, Any]] = []

    @app.task(bind=True)
    def progress(self: Task[Any, Any]) -> str:
        self.update_state(state="PROGRESS", meta={"done": 3, "total": 10})
        handle = app.AsyncResult(self.request.id or "")
        seen.append((handle.state, handle.info))
        return "finished"

    result = progress.apply()

    assert seen == [("PROGRESS", {"done": 3, "total": 10})]
    assert result.get() == "finished"
    # Eager results are not stored, so the backend still shows the last custom state.
    assert app.AsyncResult(result.id).state == "PROGRESS"
    assert app.AsyncResult(result.id).ready() is False


def test_update_state_for_another_task_id(app: Celery) -> None:
    @app.task
    def noop() -> None:
        """Never runs."""

    noop.update_state(task_id="other", state="PROGRESS", meta={"n": 1})

    assert noop.AsyncResult("other").state == "PROGRESS"
    assert noop.AsyncResult("other").result == {"n": 1}
    assert noop.AsyncResult("other").task_name == noop.name


def test_update_state_outside_a_task_needs_a_task_id(app: Celery) -> None:
    @app.task
    def noop() -> None:
        """Never runs."""

    with pytest.raises(RuntimeError, match="needs task_id="):
        noop.update_state(state="PROGRESS")


def test_update_state_does_not_overwrite_a_ready_result(app: Celery) -> None:
    @app.task
    def noop() -> None:
        """Never runs."""

    backend = app.backend
    assert backend is not None
    backend.store_result("done-id", 5, states.SUCCESS)

    noop.update_state(task_id="done-id", state="PROGRESS", meta={})

    assert app.AsyncResult("done-id").get() == 5


# -- misc -----------------------------------------------------------------------------------------


def test_repr_and_backend(app: Celery) -> None:
    @app.task(name="named.task")
    def job() -> None:
        """Named."""

    assert repr(job) == "<@task: named.task of t>"
    assert job.backend is app.backend
