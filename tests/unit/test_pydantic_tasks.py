"""``@app.task(pydantic=True)`` (issue 14): Celery's model arguments and results.

pydantic is a test dependency (``dev`` extra); the library imports it only for a task
that asks for it.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest

from chard import Celery, shared_task
from chard.exceptions import ImproperlyConfigured, RemoteTaskError
from tests.unit.test_canvas import drain

pydantic = pytest.importorskip("pydantic")


class Order(pydantic.BaseModel):  # type: ignore[misc,name-defined]
    item: str
    quantity: int


class Receipt(pydantic.BaseModel):  # type: ignore[misc,name-defined]
    item: str
    total: float


def test_model_arguments_are_validated_and_a_model_result_is_dumped(app: Celery) -> None:
    @app.task(name="buy", pydantic=True)
    def buy(order: Order, note: Order | None = None, price: float = 1.5) -> Receipt:
        assert isinstance(order, Order)
        return Receipt(item=order.item, total=order.quantity * price)

    # Sent through the broker and run as a worker runs it: plain data on the wire
    result = buy.delay({"item": "tea", "quantity": 2})
    drain(app)
    assert result.get(timeout=1) == {"item": "tea", "total": 3.0}
    # Called directly, a model instance is used as it is
    assert buy(Order(item="tea", quantity=1)) == {"item": "tea", "total": 1.5}


def test_invalid_data_fails_the_task_with_pydantics_error(app: Celery) -> None:
    @app.task(name="buy_strict", pydantic=True, pydantic_strict=True)
    def buy_strict(order: Order) -> str:
        return order.item

    result = buy_strict.delay({"item": "tea", "quantity": "2"})  # strict: "2" is not an int
    drain(app)
    # pydantic's error cannot be rebuilt from its arguments: it arrives as RemoteTaskError,
    # with the remote traceback naming the field
    with pytest.raises(RemoteTaskError, match="ValidationError") as info:
        result.get(timeout=1)
    assert "quantity" in (info.value.remote_traceback or "")


def test_bound_async_and_shared_tasks_are_wrapped_too(app: Celery) -> None:
    @app.task(name="bound_buy", bind=True, pydantic=True)
    def bound_buy(self: Any, order: Order) -> str:
        return f"{self.name}:{order.quantity}"

    @app.task(name="async_buy", pydantic=True)
    async def async_buy(order: Order) -> Receipt:
        await asyncio.sleep(0)
        return Receipt(item=order.item, total=order.quantity)

    @shared_task(name="shared_buy", pydantic=True)
    def shared_buy(order: Order) -> int:
        return order.quantity

    assert bound_buy.apply(({"item": "x", "quantity": 3},)).get() == "bound_buy:3"
    assert async_buy.apply(({"item": "x", "quantity": 3},)).get() == {"item": "x", "total": 3.0}
    assert app.tasks["shared_buy"].apply(({"item": "x", "quantity": 4},)).get() == 4


def test_without_pydantic_installed_the_error_says_what_to_do(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pydantic", None)  # what an import sees when it is absent
    with pytest.raises(ImproperlyConfigured, match=r"pip install 'pydantic>=2'"):
        app.task(name="needs_it", pydantic=True)(lambda order: order)
