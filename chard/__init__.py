"""chard: a distributed task queue with Celery's API, wire protocol and a safer, faster core.

Switch from Celery by changing the import::

    from chard import Celery
    app = Celery("proj", include=["proj.tasks"])   # no broker: embedded SQLite
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from chard import states
from chard._context import Proxy, get_current_app, get_current_task
from chard.app import Celery, Chard, shared_task
from chard.canvas import Signature, signature, subtask
from chard.exceptions import ChardError
from chard.protocol.topology import Exchange, Queue, binding
from chard.result import AsyncResult, EagerResult, GroupResult, ResultSet
from chard.task import Task

if TYPE_CHECKING:
    # Loaded lazily at runtime (``__getattr__`` below); imported here so that type
    # checkers see the real classes, not ``Any``.
    from chard.canvas import chain, chord, chunks, group, maybe_signature, xmap, xstarmap

__version__ = "0.1.0"
VERSION = tuple(int(p) for p in __version__.split("."))

#: The current app, resolved at each use: importable before any app exists, as in Celery.
current_app: Celery = cast(Celery, Proxy(get_current_app))
#: The task running in this context (false outside a task), resolved at each use.
current_task: Task[Any, Any] = cast("Task[Any, Any]", Proxy(get_current_task))

_CANVAS = ("chain", "group", "chord", "chunks", "xmap", "xstarmap", "maybe_signature")


def __getattr__(name: str) -> Any:
    # Canvas primitives load lazily.
    if name in _CANVAS:
        from chard import canvas

        return getattr(canvas, name)
    raise AttributeError(f"module 'chard' has no attribute {name!r}")


__all__ = [
    "VERSION",
    "AsyncResult",
    "Celery",
    "Chard",
    "ChardError",
    "EagerResult",
    "Exchange",
    "GroupResult",
    "Queue",
    "ResultSet",
    "Signature",
    "Task",
    "__version__",
    "binding",
    "chain",
    "chord",
    "chunks",
    "current_app",
    "current_task",
    "group",
    "maybe_signature",
    "shared_task",
    "signature",
    "states",
    "subtask",
    "xmap",
    "xstarmap",
]
