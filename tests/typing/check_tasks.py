"""Type checks for tasks: what ``@app.task`` and ``@shared_task`` give their callers.

mypy checks this module (``scripts/check``); nothing runs it. Each ``assert_type``
states a type a user's code sees; ``test_rejections.py`` proves that the wrong calls
do not type-check, so these checks could fail.
"""

from __future__ import annotations

from typing import Any, assert_type

from chard import AsyncResult, Celery, EagerResult, Task, shared_task


def check_app_task_bare_and_with_options(app: Celery) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="typing.mul", ignore_result=False)
    def mul(x: int, y: int) -> int:
        return x * y

    for task in (add, mul):
        assert_type(task.delay(1, 2), AsyncResult[int])
        assert_type(task.delay(x=1, y=2), AsyncResult[int])
        assert_type(task(1, 2), int)
        assert_type(task.apply_async((1, 2)), AsyncResult[int])
        assert_type(task.apply_async((1, 2), countdown=1.0), AsyncResult[int])
        assert_type(task.apply((1, 2)), EagerResult[int])
        assert_type(task.delay(1, 2).get(timeout=1.0), int)
        assert_type(task.AsyncResult("an-id"), AsyncResult[int])


def check_shared_task_bare_and_with_options() -> None:
    @shared_task
    def add(x: int, y: int) -> int:
        return x + y

    @shared_task(name="typing.shout", ignore_result=True)
    def shout(word: str) -> str:
        return word.upper()

    assert_type(add.delay(1, 2), AsyncResult[int])
    assert_type(add(1, 2), int)
    assert_type(add.apply_async((1, 2)), AsyncResult[int])
    assert_type(shout.delay("hi"), AsyncResult[str])
    assert_type(shout("hi"), str)


def check_bound_tasks_drop_self(app: Celery) -> None:
    @app.task(bind=True)
    def job(self: Task[Any, Any], x: int) -> str:
        return f"{self.request.id}:{x}"

    @app.task(bind=True, max_retries=5)
    def untyped_self(self: Any, x: int) -> str:
        return str(x)

    @shared_task(bind=True)
    def shared_job(self: Task[Any, Any], x: int) -> str:
        return str(self.request.retries + x)

    for task in (job, untyped_self, shared_job):
        assert_type(task.delay(1), AsyncResult[str])
        assert_type(task(1), str)
        assert_type(task.apply_async((1,)), AsyncResult[str])


def check_bind_false_and_unknown_bind(app: Celery, flag: bool) -> None:
    @app.task(bind=False)
    def plain(x: int) -> int:
        return x

    @app.task(bind=flag)  # bind unknown to the checker: any arguments, result still typed
    def either(*args: Any) -> int:
        return len(args)

    assert_type(plain.delay(1), AsyncResult[int])
    assert_type(either.delay(1, 2, 3), AsyncResult[int])
