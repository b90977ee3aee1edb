"""The two pieces of implicit state chard allows, both explicit contextvars.

* the current app: set by ``Celery()`` (``set_as_current=True``), read by
  ``shared_task`` and ``chard.current_app``; never auto-created.
* the current task and its request: set while a task body runs, read by ``self.request``,
  ``chard.current_task``, task loggers, and ``AsyncResult.get()`` to refuse a blocking
  wait inside a task.

:class:`Proxy` is the one proxy chard has: Celery code does ``from celery import
current_app`` at import time, before any app exists, and reads it later, so
``chard.current_app`` and ``chard.current_task`` must resolve on each use.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from chard.exceptions import NoCurrentApp

_current_app: ContextVar[Any] = ContextVar("chard_current_app", default=None)
_default_app: list[Any] = []  # the last app created with set_as_current, for other threads
_current_request: ContextVar[Any] = ContextVar("chard_current_request", default=None)
_current_task: ContextVar[Any] = ContextVar("chard_current_task", default=None)


def set_current_app(app: Any) -> None:
    """Make ``app`` the current app (for this context and, as a fallback, every thread)."""
    _current_app.set(app)
    _default_app[:] = [app]


def get_current_app() -> Any:
    """Return the current app.

    Raises:
        NoCurrentApp: no ``Celery()`` was created yet.
    """
    app = _current_app.get() or (_default_app[0] if _default_app else None)
    if app is None:
        raise NoCurrentApp(
            "no current app; create one with Celery('proj') before using shared_task "
            "or current_app (for Django, import your celery module in the project __init__)"
        )
    return app


def peek_current_app() -> Any:
    """Return the current app or None, without raising."""
    return _current_app.get() or (_default_app[0] if _default_app else None)


def get_current_request() -> Any:
    """Return the request of the task running in this context, or None."""
    return _current_request.get()


def get_current_task() -> Any:
    """Return the task running in this context, or None."""
    return _current_task.get()


def push_request(request: Any, task: Any = None) -> Any:
    """Set the current request (and task); returns a token for :func:`pop_request`."""
    return _current_request.set(request), _current_task.set(task)


def pop_request(token: Any) -> None:
    """Restore the request and task that were current before :func:`push_request`."""
    request_token, task_token = token
    _current_task.reset(task_token)
    _current_request.reset(request_token)


class Proxy:
    """Stand in for what ``resolve()`` returns at each use (Celery's ``current_app`` proxy).

    Attribute access, calls, truth, equality and ``isinstance`` all go to the object
    resolved at that moment, so the proxy can be imported before that object exists.
    """

    __slots__ = ("__resolve", "__weakref__")

    def __init__(self, resolve: Callable[[], Any]) -> None:
        object.__setattr__(self, "_Proxy__resolve", resolve)

    def _get_current_object(self) -> Any:
        """Return the object this proxy stands for now (Celery's and werkzeug's name)."""
        return self.__resolve()

    @property  # type: ignore[misc]  # isinstance(proxy, Celery) looks here
    def __class__(self) -> type:
        # Tools that scan every object (gevent's monkey-patching, gc walkers) ask any object
        # for its class: an app not created yet must not make that an error.
        try:
            return type(self._get_current_object())
        except NoCurrentApp:
            return Proxy

    def __getattr__(self, name: str) -> Any:
        try:
            target = self._get_current_object()
        except NoCurrentApp:
            if name.startswith("__") and name.endswith("__"):  # introspection (inspect, copy)
                raise AttributeError(name) from None
            raise
        return getattr(target, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._get_current_object(), name, value)

    def __delattr__(self, name: str) -> None:
        delattr(self._get_current_object(), name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._get_current_object()(*args, **kwargs)

    def __bool__(self) -> bool:
        return bool(self._get_current_object())

    def __eq__(self, other: object) -> bool:
        return bool(self._get_current_object() == other)

    def __ne__(self, other: object) -> bool:
        return bool(self._get_current_object() != other)

    def __hash__(self) -> int:
        return hash(self._get_current_object())

    def __repr__(self) -> str:
        try:
            return repr(self._get_current_object())
        except NoCurrentApp:
            return "<Proxy of the current app: none yet>"

    def __dir__(self) -> list[str]:
        return dir(self._get_current_object())
