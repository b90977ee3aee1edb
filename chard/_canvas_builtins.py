"""Built-in tasks behind ``task.map``, ``task.starmap`` and ``task.chunks``.

Celery implements these canvas primitives as tasks registered in every app under
``celery.map``, ``celery.starmap`` and ``celery.chunks``; chard registers tasks with
the same names and arguments, so a message sent by either side runs on the other.
Each runs the wrapped task *inline*, item by item, inside one message: that is the
point of map/chunks (one message for many small calls).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chard.app import Celery

#: Names of the built-in tasks; ``TaskRegistry.user_tasks()`` leaves them out.
BUILTIN_NAMES = ("celery.map", "celery.starmap", "celery.chunks")


def register_builtins(app: Celery) -> None:
    """Register the canvas built-in tasks in ``app`` (called by ``Celery.__init__``)."""

    def xmap(task: Mapping[str, Any], it: Iterable[Any]) -> list[Any]:
        """Call ``task`` once per item of ``it`` (``task.map``)."""
        run = _task_of(app, task)
        return [run(item) for item in it]

    def xstarmap(task: Mapping[str, Any], it: Iterable[Any]) -> list[Any]:
        """Call ``task`` once per item of ``it``, unpacking the item (``task.starmap``)."""
        run = _task_of(app, task)
        return [run(*item) for item in it]

    def chunks(task: Mapping[str, Any], it: Iterable[Any], n: int) -> list[str]:
        """Split ``it`` into groups of ``n`` and send them as a group; return the member ids.

        Celery returns the GroupResult object itself, which JSON cannot carry; the ids
        are enough for ``GroupResult(id, [AsyncResult(i) ...])`` on the caller's side.
        """
        from chard.canvas import chunks as chunks_sig

        result = chunks_sig(task, it, n, app=app).group().apply_async()
        return [r.id for r in result.results]

    app.task(name="celery.map")(xmap)
    app.task(name="celery.starmap")(xstarmap)
    app.task(name="celery.chunks")(chunks)


def _task_of(app: Celery, task: Mapping[str, Any]) -> Any:
    """Return the callable task named by a signature dict, bound to its partial arguments."""
    from chard.canvas import signature

    sig = signature(task, app=app)
    target = app.tasks[sig.task]
    if not sig.args and not sig.kwargs:
        return target

    def call(*args: Any) -> Any:
        return target(*args, *sig.args, **sig.kwargs)

    return call
