"""Results: ``AsyncResult`` for one task, ``GroupResult`` for many, ``EagerResult`` inline.

``get()`` blocks on the backend's wait (woken by the store where it can notify) and
re-raises a task's exception as its original type when that type is importable here,
else as :class:`~chard.exceptions.RemoteTaskError` with the remote traceback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from chard import _context, states
from chard.backends.base import ResultBackend, decode_exception
from chard.exceptions import ImproperlyConfigured, TaskRevokedError

if TYPE_CHECKING:
    from chard.app import Celery

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
        return cast("R", self._value(propagate))

    wait = get

    async def aget(self, timeout: float | None = None, propagate: bool = True) -> R:
        """Await the task's value without blocking the event loop."""
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


class EagerResult(AsyncResult[R]):
    """The result of a task run inline (``apply()``, ``task_always_eager``): already ready."""

    def __init__(
        self,
        id: str,
        value: Any,
        state: str,
        traceback: str | None = None,
        app: Celery | None = None,
        task_name: str | None = None,
    ) -> None:
        super().__init__(id, app=app, task_name=task_name)
        self._cache = {
            "status": state,
            "result": value,
            "traceback": traceback,
            "task_id": id,
            "date_done": None,
        }

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
        return cast("R", self._value(propagate))

    def forget(self) -> None:
        """Nothing is stored for an eager result."""

    def revoke(
        self,
        connection: Any = None,
        terminate: bool = False,
        signal: str | int | None = None,
        wait: bool = False,
        timeout: float | None = None,
    ) -> None:
        """Mark this result REVOKED, here only (Celery's): the task has already run.

        Its value is replaced by :class:`~chard.exceptions.TaskRevokedError`, so
        ``get()`` raises that instead of Celery's ``Exception(<value>)``.
        """
        assert self._cache is not None  # an eager result is always ready
        self._cache = {**self._cache, "status": states.REVOKED, "result": TaskRevokedError()}

    def __repr__(self) -> str:
        return f"<EagerResult: {self.id}>"


class GroupResult:
    """The results of a group of tasks, in the order they were sent."""

    def __init__(
        self,
        id: str | None,
        results: Sequence[AsyncResult[Any]],
        app: Celery | None = None,
        parent: AsyncResult[Any] | GroupResult | None = None,
    ) -> None:
        self.id = id
        self.results = list(results)
        self.app: Celery = app if app is not None else _context.get_current_app()
        self.parent = parent

    @property
    def children(self) -> list[AsyncResult[Any]]:
        """The member results (Celery's alias)."""
        return self.results

    def _metas(self) -> list[dict[str, Any]]:
        backend = _require_backend(self.app)
        return backend.get_many([r.id for r in self.results])

    def ready(self) -> bool:
        """Return whether every member finished."""
        return all(m["status"] in states.READY_STATES for m in self._metas())

    def successful(self) -> bool:
        """Return whether every member succeeded."""
        return all(m["status"] == states.SUCCESS for m in self._metas())

    def failed(self) -> bool:
        """Return whether any member failed."""
        return any(m["status"] == states.FAILURE for m in self._metas())

    def waiting(self) -> bool:
        """Return whether any member has not finished."""
        return not self.ready()

    def completed_count(self) -> int:
        """Return how many members succeeded."""
        return sum(m["status"] == states.SUCCESS for m in self._metas())

    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        disable_sync_subtasks: bool = True,
        **_ignored: Any,
    ) -> list[Any]:
        """Wait for every member; return their values in order."""
        _refuse_wait_inside_task(disable_sync_subtasks)
        backend = _require_backend(self.app)
        metas = backend.wait_for_many([r.id for r in self.results], timeout, interval)
        values = []
        for meta in metas:
            if meta["status"] in states.PROPAGATE_STATES:
                exc = decode_exception(meta["result"], meta.get("traceback"))
                if propagate:
                    raise exc
                values.append(exc)
            else:
                values.append(meta["result"])
        return values

    join = get

    async def aget(self, timeout: float | None = None, propagate: bool = True) -> list[Any]:
        """Await every member's value without blocking the event loop."""
        return await asyncio.to_thread(
            self.get, timeout=timeout, propagate=propagate, disable_sync_subtasks=False
        )

    def save(self) -> GroupResult:
        """Store the member ids so :meth:`restore` can find them by group id."""
        if self.id is None:
            raise ValueError("cannot save a group result without an id")
        _require_backend(self.app).save_group(self.id, [r.id for r in self.results])
        return self

    @classmethod
    def restore(cls, id: str, app: Celery | None = None) -> GroupResult | None:
        """Return the saved group ``id``, or None if it was never saved."""
        app = app if app is not None else _context.get_current_app()
        ids = _require_backend(app).restore_group(id)
        if ids is None:
            return None
        return cls(id, [AsyncResult(t, app=app) for t in ids], app=app)

    def delete(self) -> None:
        """Delete the saved group."""
        if self.id is not None:
            _require_backend(self.app).delete_group(self.id)

    def forget(self) -> None:
        """Delete every member's stored result."""
        for result in self.results:
            result.forget()

    def revoke(
        self,
        connection: Any = None,
        terminate: bool = False,
        signal: str | int | None = None,
        wait: bool = False,
        timeout: float | None = None,
    ) -> None:
        """Revoke every member, nested groups' members included, in one revocation.

        Same arguments and durability as :meth:`AsyncResult.revoke`.
        """
        control = self.app.control
        wait_for = 1.0 if timeout is None else timeout
        control.revoke(self._member_ids(), None, terminate, signal, reply=wait, timeout=wait_for)

    def _member_ids(self) -> list[str]:
        ids: list[str] = []
        for result in self.results:
            member: object = result  # typed as AsyncResult, but a nested group's is a group
            if isinstance(member, GroupResult):
                ids.extend(member._member_ids())
            else:
                ids.append(result.id)
        return ids

    def _raise_if_failed(self) -> None:
        """Raise a failed member's error (``get(follow_parents=True)`` on a chord body)."""
        if self.parent is not None:
            self.parent._raise_if_failed()
        for meta in self._metas():
            if meta["status"] in states.PROPAGATE_STATES:
                raise decode_exception(meta["result"], meta.get("traceback"))

    def __iter__(self) -> Iterator[AsyncResult[Any]]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, index: int) -> AsyncResult[Any]:
        return self.results[index]

    def __repr__(self) -> str:
        return f"<GroupResult: {self.id} [{', '.join(r.id for r in self.results)}]>"


class EagerGroupResult(GroupResult):
    """A group run inline: every member is an :class:`EagerResult`, nothing is stored."""

    def _metas(self) -> list[dict[str, Any]]:
        return [r._get_meta() for r in self.results]

    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        disable_sync_subtasks: bool = True,
        **_ignored: Any,
    ) -> list[Any]:
        """Return the members' values in order (already computed)."""
        return [r.get(propagate=propagate) for r in self.results]

    join = get

    def revoke(
        self,
        connection: Any = None,
        terminate: bool = False,
        signal: str | int | None = None,
        wait: bool = False,
        timeout: float | None = None,
    ) -> None:
        """Mark every member REVOKED, here only (see :meth:`EagerResult.revoke`)."""
        for result in self.results:
            result.revoke()

    def __repr__(self) -> str:
        return f"<EagerGroupResult: {self.id} [{', '.join(r.id for r in self.results)}]>"


ResultSet = GroupResult
