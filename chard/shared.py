"""``shared_task``: tasks declared without an app, for reusable apps and libraries.

A shared task is kept here and added to the registry of every app (the current one
at once, others when they first list their tasks), so a module of tasks never has
to import the project's app: the circular import Celery's docs warn about.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Concatenate, Literal, ParamSpec, TypeVar, overload

from chard import _context
from chard.task import Task

P = ParamSpec("P")
R = TypeVar("R")

#: Every task declared with ``shared_task``, in declaration order.
declared: list[Task[Any, Any]] = []


# The same overloads as Celery.task: bare, with options, and bind=True (the task itself
# is the function's first argument, not one that callers pass).
@overload
def shared_task(fn: Callable[P, R], /) -> Task[P, R]: ...


@overload
def shared_task(
    *, bind: Literal[True], **options: Any
) -> Callable[[Callable[Concatenate[Any, P], R]], Task[P, R]]: ...


@overload
def shared_task(
    *, bind: Literal[False] = False, **options: Any
) -> Callable[[Callable[P, R]], Task[P, R]]: ...


@overload
def shared_task(*, bind: bool, **options: Any) -> Callable[[Callable[..., R]], Task[..., R]]: ...


def shared_task(*args: Any, **options: Any) -> Any:
    """Declare a task for whichever app is current (no app import, no circular import).

    Usable bare (``@shared_task``) or with options (``@shared_task(bind=True)``).
    """

    def decorate(func: Callable[..., Any]) -> Task[Any, Any]:
        app = _context.peek_current_app()
        # The current app's task class (task_cls=, DjangoTask under Django), as in Celery.
        default = app.Task if app is not None else Task
        base: type[Task[Any, Any]] = options.pop("base", None) or default
        task = base(func, app=None, **options)
        declared.append(task)
        if app is not None:
            app.tasks.setdefault(task.name, task)
        return task

    if len(args) == 1 and callable(args[0]) and not options:
        return decorate(args[0])
    return decorate
