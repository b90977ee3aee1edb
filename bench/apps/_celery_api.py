"""The client adapter of an app with Celery's API: chard's (``benchapp``) and Celery's."""

from collections.abc import Callable, Iterable
from typing import Any


class CeleryApi:
    """``send``, ``send_many``, ``call``, ``wait``, ``wait_all`` over ``drain`` and ``noop``.

    ``collect`` makes the result set whose ``get()`` waits for many (chard's
    ``GroupResult``, Celery's ``ResultSet``); ``get_options`` go to every ``get()``.
    """

    def __init__(
        self,
        drain: Any,
        noop: Any,
        group: Callable[[Iterable[Any]], Any],
        collect: Callable[[list[Any]], Any],
        **get_options: Any,
    ) -> None:
        self.drain, self.noop, self.group, self.collect = drain, noop, group, collect
        self.get_options = get_options

    def send(self) -> None:
        self.drain.delay()

    def send_many(self, n: int) -> None:
        self.group(self.drain.s() for _ in range(n)).apply_async()

    def call(self) -> Any:
        return self.noop.delay()

    def wait(self, handle: Any) -> None:
        handle.get(timeout=30, **self.get_options)

    def wait_all(self, handles: list[Any]) -> None:
        self.collect(handles).get(timeout=300, **self.get_options)
