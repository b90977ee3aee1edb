"""``AsyncResult``: the pending result of one task, and the tree of results around it.

``get()`` blocks on the backend's wait (woken by the store where it can notify) and
re-raises a task's exception as its original type when that type is importable here,
else as :class:`~chard.exceptions.RemoteTaskError` with the remote traceback.

A result links to its ``parent`` (the previous chain step) and, through the meta the
worker stores, to its ``children`` (what the task sent while it ran); both travel as
Celery's nested tuples (:meth:`AsyncResult.as_tuple`, :func:`result_from_tuple`), so
``iterdeps()``/``collect()`` walk the tree a Celery client would.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from chard import _context, states
from chard.backends.base import ResultBackend, decode_exception
from chard.exceptions import ChardError, ImproperlyConfigured

if TYPE_CHECKING:
    from chard.app import Celery
    from chard.result.resultset import GroupResult

R = TypeVar("R")


class ResultsDisabled(ImproperlyConfigured, NotImplementedError):
    """Results were asked for, but the app has no result backend."""


def _require_backend(app: Celery) -> ResultBackend:
    backend = app.backend
    if backend is None:
        raise ResultsDisabled(
            "no result backend is configured, so results are disabled; set one, e.g. "
            "Celery('proj', broker=..., backend='redis://localhost:6379/0') or "
            "app.conf.result_backend = 'sqlite:///results.sqlite3'"
        )
    return backend


def _refuse_wait_inside_task(disable_sync_subtasks: bool) -> None:
    request = _context.get_current_request()
    if disable_sync_subtasks and request is not None and not request.is_eager:
        raise RuntimeError(
            "never call result.get() inside a task: it can deadlock the pool; "
            "use a chain or chord (or pass disable_sync_subtasks=False if you must)"
        )


class IncompleteStream(ChardError):
    """``iterdeps()`` reached a result that is not ready (Celery's name)."""


class AsyncResult(Generic[R]):
    """The pending result of one task, by id."""

    def __init__(
        self,
        id: str,
        app: Celery | None = None,
        parent: AsyncResult[Any] | GroupResult | None = None,
        task_name: str | None = None,
        ignored: bool = False,
    ) -> None:
        self.id = id
        self.app: Celery = app if app is not None else _context.get_current_app()
        #: Sent with ``ignore_result``: no state will be stored, so ``get()`` returns None
        #: at once (Celery's ``AsyncResult.ignored``) instead of waiting forever.
        self.ignored = ignored
        #: The previous step's result in a chain (a GroupResult for a chord body).
        self.parent = parent
        self.task_name = task_name
        self._cache: dict[str, Any] | None = None

    # -- state ----------------------------------------------------------------
    def _get_meta(self) -> dict[str, Any]:
        if self._cache is not None:
            return self._cache
        meta = _require_backend(self.app).get_task_meta(self.id)
        if meta["status"] in states.READY_STATES:
            self._cache = meta
        return meta

    @property
    def state(self) -> str:
        """The task's state; ``PENDING`` for an unknown id."""
        return str(self._get_meta()["status"])

    status = state

    @property
    def result(self) -> Any:
        """The return value, the exception if it failed, or the meta of a custom state."""
        meta = self._get_meta()
        if meta["status"] in states.EXCEPTION_STATES:
            return decode_exception(meta["result"], meta.get("traceback"))
        return meta["result"]

    info = result

    @property
    def traceback(self) -> str | None:
        """The formatted traceback of a failure, or None."""
        return cast("str | None", self._get_meta().get("traceback"))

    @property
    def date_done(self) -> datetime | None:
        """When the task reached a ready state (aware UTC), or None."""
        value = self._get_meta().get("date_done")
        if not value:
            return None
        done = datetime.fromisoformat(value)
        # Celery < 5 stored naive UTC times.
        return done if done.tzinfo is not None else done.replace(tzinfo=UTC)

    @property
    def name(self) -> str | None:
        """The task name when known (``result_extended`` or set by the caller)."""
        return self.task_name or self._get_meta().get("name")

    @property
    def args(self) -> list[Any] | None:
        """The positional arguments it ran with (``result_extended`` only)."""
        return cast("list[Any] | None", self._get_meta().get("args"))

    @property
    def kwargs(self) -> dict[str, Any] | None:
        """The keyword arguments it ran with (``result_extended`` only)."""
        return cast("dict[str, Any] | None", self._get_meta().get("kwargs"))

    @property
    def worker(self) -> str | None:
        """The node name of the worker that ran it (``result_extended`` only)."""
        return cast("str | None", self._get_meta().get("worker"))

    @property
    def retries(self) -> int | None:
        """How many times it was retried (``result_extended`` only)."""
        return cast("int | None", self._get_meta().get("retries"))

    @property
    def queue(self) -> str | None:
        """The queue it was delivered from (``result_extended`` only)."""
        return cast("str | None", self._get_meta().get("queue"))

    def ready(self) -> bool:
        """Return whether the task finished (succeeded, failed or was revoked)."""
        return self.state in states.READY_STATES

    def successful(self) -> bool:
        """Return whether the task succeeded."""
        return self.state == states.SUCCESS

    def failed(self) -> bool:
        """Return whether the task failed."""
        return self.state == states.FAILURE

    def exists(self) -> bool:
        """Return whether any state is stored for this id (PENDING alone means unknown)."""
        return _require_backend(self.app).exists(self.id)

    # -- waiting --------------------------------------------------------------
    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        no_ack: bool = True,
        follow_parents: bool = True,
        disable_sync_subtasks: bool = True,
        **_ignored: Any,
    ) -> R:
        """Wait for the task and return its value.

        Args:
            timeout: seconds to wait; None waits forever.
            propagate: re-raise the task's exception (default); with False, return it.
            interval: longest pause between reads when the backend cannot notify.

        Returns None at once for a task sent with ``ignore_result`` (nothing is stored).

        Raises:
            ResultTimeout: (also ``TimeoutError``) the timeout passed first.
            ResultsDisabled: (a ``NotImplementedError``) the app has no result backend.
        """
        _refuse_wait_inside_task(disable_sync_subtasks)
        if self.ignored:
            return cast("R", None)
        backend = _require_backend(self.app)
        if follow_parents and propagate and self.parent is not None:
            self.parent._raise_if_failed()
        if self._cache is None:
            self._cache = backend.wait_for(self.id, timeout=timeout, interval=interval)
        failed = self._cache["status"] in states.PROPAGATE_STATES
        if failed and follow_parents and propagate and self.parent is not None:
            # A parent that failed while we waited caused this failure (a chord's
            # ChordError, a chain step's): raise the parent's own error, as Celery does.
            self.parent._raise_if_failed()
        return cast("R", self._value(propagate))

    wait = get

    async def aget(self, timeout: float | None = None, propagate: bool = True) -> R:
        """Await the task's value without blocking the event loop."""
        import asyncio  # loaded by the awaiting loop; not at import: ~10 MiB per process

        return await asyncio.to_thread(
            self.get, timeout=timeout, propagate=propagate, disable_sync_subtasks=False
        )

    def _value(self, propagate: bool) -> Any:
        meta = self._get_meta()
        if meta["status"] in states.PROPAGATE_STATES:
            exc = decode_exception(meta["result"], meta.get("traceback"))
            if propagate:
                raise exc
            return exc
        return meta["result"]

    def _raise_if_failed(self) -> None:
        if self.parent is not None:
            self.parent._raise_if_failed()
        meta = _require_backend(self.app).get_task_meta(self.id)
        if meta["status"] in states.PROPAGATE_STATES:
            raise decode_exception(meta["result"], meta.get("traceback"))

    def forget(self) -> None:
        """Delete the stored result."""
        self._cache = None
        _require_backend(self.app).forget(self.id)

    def revoke(
        self,
        connection: Any = None,
        terminate: bool = False,
        signal: str | int | None = None,
        wait: bool = False,
        timeout: float | None = None,
    ) -> None:
        """Revoke the task: workers discard it (state REVOKED) instead of running it.

        Durable, unlike Celery's: a worker started later within 3 hours honours it
        too. See :meth:`chard.control.Control.revoke` for ``terminate`` and ``signal``;
        ``wait=True`` waits up to ``timeout`` (1 s) for the running nodes to confirm.
        """
        control = self.app.control
        wait_for = 1.0 if timeout is None else timeout
        control.revoke(self.id, None, terminate, signal, reply=wait, timeout=wait_for)

    # -- the tree of results ------------------------------------------------------
    def as_tuple(self) -> tuple[Any, ...]:
        """Return Celery's serialized form: ``((id, parent tuple), None)``."""
        parent = self.parent.as_tuple() if self.parent is not None else None
        return (self.id, parent), None

    def as_list(self) -> list[str]:
        """Return this task's id, then its ancestors' (the chain back to the first step)."""
        ids = [self.id]
        if self.parent is not None:
            ids.extend(self.parent.as_list())
        return ids

    @property
    def children(self) -> list[AsyncResult[Any] | GroupResult] | None:
        """The results of what the task sent while it ran, once it is ready (else None)."""
        meta = self._get_meta()
        children = meta.get("children")
        if meta["status"] not in states.READY_STATES or children is None:
            return None
        return [result_from_tuple(child, self.app) for child in children]

    def iterdeps(
        self, intermediate: bool = False
    ) -> Iterator[tuple[AsyncResult[Any] | GroupResult | None, Any]]:
        """Yield ``(parent, result)`` for this result and every descendant, breadth first.

        Raises:
            IncompleteStream: a result is not ready yet (unless ``intermediate``).
        """
        stack: deque[tuple[Any, Any]] = deque([(None, self)])
        while stack:
            parent, node = stack.popleft()
            yield parent, node
            if node.ready():
                stack.extend((node, child) for child in node.children or ())
            elif not intermediate:
                raise IncompleteStream(
                    f"result {node.id} is not ready; pass intermediate=True to walk past it"
                )

    def collect(self, intermediate: bool = False, **kwargs: Any) -> Iterator[tuple[Any, Any]]:
        """Wait for this task and everything it sent; yield ``(result, value)`` for each."""
        for _, node in self.iterdeps(intermediate=intermediate):
            yield node, node.get(**kwargs)

    def get_leaf(self) -> Any:
        """Return the value of the last result :meth:`iterdeps` reaches."""
        value = None
        for _, node in self.iterdeps():
            value = node.get()
        return value

    def __reduce__(self) -> Any:
        # The app is not picklable; the unpickled result uses the current app.
        return (type(self), (self.id, None, self.parent, self.task_name, self.ignored))

    def __repr__(self) -> str:
        return f"<AsyncResult: {self.id}>"

    def __str__(self) -> str:
        return self.id

    def __eq__(self, other: object) -> bool:
        if isinstance(other, AsyncResult):
            return other.id == self.id
        if isinstance(other, str):
            return other == self.id
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.id)


#: Rebuilds a group from its tuple (set by :mod:`chard.result.resultset`, which sits above).
_GROUP_TYPE: list[Callable[..., Any]] = []


def result_from_tuple(value: Any, app: Celery | None = None) -> Any:
    """Rebuild a result (or a group's) from Celery's tuple form (:meth:`AsyncResult.as_tuple`)."""
    if isinstance(value, AsyncResult) or not isinstance(value, (list, tuple)):
        return value
    head, nodes = value
    task_id, parent = head if isinstance(head, (list, tuple)) else (head, None)
    parent_result = result_from_tuple(parent, app) if parent else None
    if nodes is not None:
        members = [result_from_tuple(node, app) for node in nodes]
        return _GROUP_TYPE[0](task_id, members, parent=parent_result, app=app)
    return AsyncResult(task_id, app=app, parent=parent_result)
