"""The two pieces of implicit state chard allows, both explicit contextvars.

* the current app: set by ``Celery()`` (``set_as_current=True``), read by
  ``shared_task`` and ``chard.current_app``; never auto-created.
* the current task request: set while a task body runs, read by ``self.request``
  and by ``AsyncResult.get()`` to refuse a blocking wait inside a task.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from chard.exceptions import NoCurrentApp

_current_app: ContextVar[Any] = ContextVar("chard_current_app", default=None)
_default_app: list[Any] = []  # the last app created with set_as_current, for other threads
_current_request: ContextVar[Any] = ContextVar("chard_current_request", default=None)


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


def push_request(request: Any) -> Any:
    """Set the current request; returns a token for :func:`pop_request`."""
    return _current_request.set(request)


def pop_request(token: Any) -> None:
    """Restore the request that was current before :func:`push_request`."""
    _current_request.reset(token)
