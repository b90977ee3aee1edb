"""Type checks for results: ``AsyncResult[R].get()`` is ``R``.

mypy checks this module (``scripts/check``); nothing runs it.
"""

from __future__ import annotations

from typing import Any, assert_type

from chard import AsyncResult, Celery, EagerResult, GroupResult


def check_results(app: Celery) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    result = add.delay(1, 2)
    assert_type(result.get(), int)
    assert_type(result.get(timeout=5.0, propagate=False), int)
    assert_type(result.state, str)
    assert_type(result.ready(), bool)
    assert_type(add.apply((1, 2)).get(), int)
    assert_type(EagerResult[str]("an-id", "x", "SUCCESS").get(), str)
    assert_type(app.AsyncResult("an-id"), AsyncResult[Any])
    assert_type(GroupResult("gid", [result]).get(), list[Any])
