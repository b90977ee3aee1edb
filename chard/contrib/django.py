"""Django: what Celery's Django fix-up does, for chard.

A project uses Django when ``DJANGO_SETTINGS_MODULE`` is set, or when Django's settings are
configured in this process (``app.config_from_object('django.conf:settings',
namespace='CELERY')`` read them). Then:

* **Set-up before tasks.** The worker, beat and every CLI command call :func:`setup`, which
  puts the current directory on ``sys.path`` (where ``manage.py`` is, as Celery does) and
  runs ``django.setup()`` once, before any task module is imported (``app.finalize()`` calls
  it first); so models load, and ``app.autodiscover_tasks()`` with no arguments finds each
  installed app's ``tasks.py``.
* **Database connections in the worker** (Celery's ``DjangoWorkerFixup``): the parent closes
  its connections before forking; each prefork child drops the ones it inherited without a
  word on the wire (closing the socket would break the parent's), so a child never shares a
  connection across fork; and every connection is closed before and after each task, as
  Django does around a request, so a task never gets one a server timed out meanwhile.
* **Sending after commit.** Tasks get Celery's ``delay_on_commit()`` and
  ``apply_async_on_commit()`` (:class:`DjangoTask`), the same as
  ``transaction.on_commit(lambda: task.delay(...))``: the task is sent only if the
  transaction commits, so the worker never looks for a row that is not there yet.

Django is imported only when a project uses it; ``import chard`` never imports it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import threading
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from chard import _context, signals
from chard.exceptions import ImproperlyConfigured
from chard.task import Task

if TYPE_CHECKING:
    from chard.app import Celery

__all__ = ["DjangoTask", "close_database", "default_task_class", "is_in_use", "setup"]

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

_hooks_lock = threading.Lock()
_hooks_installed = False
#: Per thread: ids of the eager tasks running (their connections are the caller's).
_eager = threading.local()


class DjangoTask(Task[P, R]):
    """A task that can be sent when the current database transaction commits (Celery's)."""

    def delay_on_commit(self, *args: Any, **kwargs: Any) -> None:
        """Call :meth:`delay` once the transaction commits (never, if it rolls back)."""
        from django.db import transaction

        transaction.on_commit(functools.partial(self.delay, *args, **kwargs))

    def apply_async_on_commit(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        """Call :meth:`apply_async` once the transaction commits (never, if it rolls back)."""
        from django.db import transaction

        transaction.on_commit(functools.partial(self.apply_async, args, kwargs, **options))


def default_task_class() -> type[Task[Any, Any]]:
    """Return the app's task class when none is given: :class:`DjangoTask` under Django."""
    return DjangoTask if os.environ.get("DJANGO_SETTINGS_MODULE") else Task


def is_in_use(app: Celery | None = None) -> bool:
    """Return whether this process runs a Django project (see the module docstring)."""
    if os.environ.get("DJANGO_SETTINGS_MODULE"):
        return True
    conf = sys.modules.get("django.conf")
    return bool(conf is not None and getattr(conf.settings, "configured", False))


def setup(app: Celery | None = None) -> bool:
    """Set Django up once if the project uses it; return whether it does.

    Raises:
        ImproperlyConfigured: Django is not installed, or cannot start (its settings module
            cannot be imported, or is wrong); one line naming the cause.
    """
    if not is_in_use(app):
        return False
    settings_module = os.environ.get("DJANGO_SETTINGS_MODULE")
    try:
        import django
        from django.apps import apps
    except ImportError as exc:
        raise ImproperlyConfigured(
            f"DJANGO_SETTINGS_MODULE is {settings_module!r} but Django is not installed; "
            "pip install django, or unset DJANGO_SETTINGS_MODULE"
        ) from exc
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # manage.py's directory, as Celery's fix-up does
    if not apps.ready:
        _setup_django(django, settings_module)
    _install_hooks()
    return True


def _setup_django(django: Any, settings_module: str | None) -> None:
    from django.core.exceptions import ImproperlyConfigured as DjangoImproperlyConfigured

    try:
        django.setup()
    except ModuleNotFoundError as exc:
        raise ImproperlyConfigured(
            f"cannot import Django settings module {settings_module!r}: {exc}; run chard from "
            "the directory that holds manage.py, or fix DJANGO_SETTINGS_MODULE"
        ) from exc
    except DjangoImproperlyConfigured as exc:
        raise ImproperlyConfigured(f"Django cannot start: {exc}") from exc


def _install_hooks() -> None:
    """Connect the database hooks to chard's signals, once per process."""
    global _hooks_installed
    with _hooks_lock:
        if _hooks_installed:
            return
        _hooks_installed = True
    signals.worker_init.connect(_on_worker_init)
    signals.worker_process_init.connect(_on_worker_process_init)
    signals.task_prerun.connect(_on_task_prerun)
    signals.task_postrun.connect(_on_task_postrun)


def _on_worker_init(**_: Any) -> None:
    # The parent may have opened connections while starting (checks, app code): close them
    # before any child is forked, so no child inherits one.
    close_database()
    _close_caches()


def _on_worker_process_init(**_: Any) -> None:
    # A connection inherited across fork is the parent's socket too: closing it cleanly would
    # send a goodbye on the parent's connection. Close only this process's descriptor, then
    # let Django forget it.
    from django.db import connections

    for conn in _connections(connections):
        raw = getattr(conn, "connection", None)
        fileno = getattr(raw, "fileno", None)
        if callable(fileno):
            with contextlib.suppress(Exception):
                os.close(fileno())
    close_database()
    _close_caches()


def _on_task_prerun(task_id: str | None = None, **_: Any) -> None:
    # apply()/eager runs in the caller's thread, maybe inside its transaction: leave the
    # caller's connection alone (postrun comes after the request is popped: remember why).
    request = _context.get_current_request()
    if request is not None and request.is_eager:
        _eager.ids = {*getattr(_eager, "ids", ()), task_id}
        return
    close_database()


def _on_task_postrun(task_id: str | None = None, **_: Any) -> None:
    eager: set[str | None] = getattr(_eager, "ids", set())
    if task_id in eager:
        eager.discard(task_id)
        return
    close_database()
    _close_caches()  # as Celery's fix-up: cache connections do not outlive the task


def close_database() -> None:
    """Close this thread's Django database connections (the next query opens a fresh one)."""
    from django.db import DatabaseError, connections
    from django.db.utils import InterfaceError

    for conn in _connections(connections):
        try:
            conn.close()
        except InterfaceError:
            pass  # already unusable: nothing to close
        except DatabaseError as exc:
            if "closed" not in str(exc) and "not connected" not in str(exc):
                raise
            logger.debug("database connection %s was closed already: %s", conn.alias, exc)


def _connections(connections: Any) -> list[Any]:
    try:
        return list(connections.all(initialized_only=True))  # Django 4.1+
    except TypeError:
        return list(connections.all())


def _close_caches() -> None:
    try:
        from django.core.cache import close_caches
    except ImportError:
        return
    close_caches()
