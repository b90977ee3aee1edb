"""``ResultSet`` (any results, waited for together) and ``GroupResult`` (a group's, by id).

Celery's shapes and argument orders: ``ResultSet(results, app=None)`` and
``GroupResult(id, results, parent=None)``. Reading many results is one backend round
trip (``get_many``), and waiting for them is the backend's ``wait_for_many`` (woken by
each store), so ``get()``/``join_native()`` never poll member by member; ``join()``
keeps Celery's member-by-member order, with a callback per member if given.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from chard import _context, states
from chard.backends.base import decode_exception
from chard.exceptions import ResultTimeout
from chard.result.asyncresult import (
    _GROUP_TYPE,
    AsyncResult,
    _refuse_wait_inside_task,
    _require_backend,
)

if TYPE_CHECKING:
    from chard.app import Celery


class ResultSet:
    """Results waited for and inspected together, in the order given."""

    def __init__(
        self, results: Iterable[Any] | None = None, app: Celery | None = None, **_ignored: Any
    ) -> None:
        self.results: list[Any] = list(results or ())
        self._app = app

    @property
    def app(self) -> Celery:
        """The app given, else the first member's, else the current app."""
        if self._app is None:
            self._app = self.results[0].app if self.results else _context.get_current_app()
        return self._app

    @app.setter
    def app(self, app: Celery) -> None:
        self._app = app

    @property
    def backend(self) -> Any:
        """The app's result backend."""
        return self.app.backend

    # -- membership -------------------------------------------------------------
    def add(self, result: AsyncResult[Any]) -> None:
        """Add ``result``, unless it is a member already."""
        if result not in self.results:
            self.results.append(result)

    def remove(self, result: AsyncResult[Any] | str) -> None:
        """Remove ``result`` (or the member with that id).

        Raises:
            KeyError: it is not a member.
        """
        if isinstance(result, str):
            result = AsyncResult(result, app=self.app)
        try:
            self.results.remove(result)
        except ValueError:
            raise KeyError(result) from None

    def discard(self, result: AsyncResult[Any] | str) -> None:
        """Remove ``result`` if it is a member."""
        with contextlib.suppress(KeyError):
            self.remove(result)

    def update(self, results: Iterable[AsyncResult[Any]]) -> None:
        """Add every result not already a member."""
        self.results.extend(r for r in results if r not in self.results)

    def clear(self) -> None:
        """Remove every member (the list object is kept)."""
        self.results[:] = []

    # -- state ------------------------------------------------------------------
    def _states(self) -> list[str]:
        """Each member's state, with one backend read for every plain task result.

        A result already read (an eager one, or one cached as ready) is not read again;
        a nested set counts as SUCCESS, FAILURE or PENDING as a whole.
        """
        found: dict[int, str] = {}
        unread: list[tuple[int, str]] = []
        for index, member in enumerate(self.results):
            if isinstance(member, ResultSet):
                found[index] = _summary(member)
            elif member._cache is not None:
                found[index] = member._cache["status"]
            else:
                unread.append((index, member.id))
        if unread:
            metas = _require_backend(self.app).get_many([task_id for _, task_id in unread])
            found.update(
                (index, meta["status"]) for (index, _), meta in zip(unread, metas, strict=True)
            )
        return [found[index] for index in range(len(self.results))]

    def ready(self) -> bool:
        """Return whether every member finished (succeeded, failed or was revoked)."""
        return all(state in states.READY_STATES for state in self._states())

    def successful(self) -> bool:
        """Return whether every member succeeded."""
        return all(state == states.SUCCESS for state in self._states())

    def failed(self) -> bool:
        """Return whether any member failed."""
        return any(state == states.FAILURE for state in self._states())

    def waiting(self) -> bool:
        """Return whether any member has not finished."""
        return not self.ready()

    def completed_count(self) -> int:
        """Return how many members succeeded (Celery's "completed")."""
        return sum(state == states.SUCCESS for state in self._states())

    def maybe_throw(self, callback: Any = None, propagate: bool = True) -> None:
        """Raise the first failed member's error (with ``propagate``)."""
        for member in self.results:
            if isinstance(member, ResultSet):
                member.maybe_throw(callback, propagate)
            elif propagate and member.state in states.PROPAGATE_STATES:
                raise member.result

    maybe_reraise = maybe_throw

    def _raise_if_failed(self) -> None:
        """Raise a failed member's error (``get(follow_parents=True)`` on a chord body)."""
        parent = getattr(self, "parent", None)
        if parent is not None:
            parent._raise_if_failed()
        self.maybe_throw()

    # -- waiting ----------------------------------------------------------------
    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        callback: Callable[[str, Any], Any] | None = None,
        disable_sync_subtasks: bool = True,
        **_ignored: Any,
    ) -> list[Any]:
        """Wait for every member; return their values in order (see :meth:`join_native`)."""
        return self.join_native(
            timeout, propagate, interval, callback, disable_sync_subtasks=disable_sync_subtasks
        )

    def join(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        callback: Callable[[str, Any], Any] | None = None,
        no_ack: bool = True,
        on_message: Any = None,
        disable_sync_subtasks: bool = True,
        **_ignored: Any,
    ) -> list[Any]:
        """Wait for each member in turn; return the values in order.

        With ``callback``, call ``callback(task_id, value)`` per member instead and
        return an empty list (Celery's). ``timeout`` covers the whole join.

        Raises:
            ResultTimeout: (also ``TimeoutError``) the members were not all ready in time.
        """
        _refuse_wait_inside_task(disable_sync_subtasks)
        deadline = None if timeout is None else time.monotonic() + timeout
        values: list[Any] = []
        for member in self.results:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise ResultTimeout(f"join of {len(self.results)} results timed out")
            value = member.get(
                timeout=remaining,
                propagate=propagate,
                interval=interval,
                disable_sync_subtasks=disable_sync_subtasks,
            )
            if callback is not None:
                callback(member.id, value)
            else:
                values.append(value)
        return values

    def join_native(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        callback: Callable[[str, Any], Any] | None = None,
        no_ack: bool = True,
        on_message: Any = None,
        on_interval: Any = None,
        disable_sync_subtasks: bool = True,
    ) -> list[Any]:
        """Wait for every member at once (one backend wait); return the values in order.

        Like :meth:`join`, with ``callback(task_id, value)`` per member if given.
        """
        _refuse_wait_inside_task(disable_sync_subtasks)
        if any(isinstance(m, ResultSet) or m._cache is not None for m in self.results):
            # nested groups and eager results are not plain ids in the backend
            return self.join(timeout, propagate, interval, callback, disable_sync_subtasks=False)
        backend = _require_backend(self.app)
        metas = backend.wait_for_many([r.id for r in self.results], timeout, interval)
        values = []
        for member, meta in zip(self.results, metas, strict=True):
            value = meta["result"]
            if meta["status"] in states.PROPAGATE_STATES:
                value = decode_exception(meta["result"], meta.get("traceback"))
                if propagate:
                    raise value
            if callback is not None:
                callback(member.id, value)
            else:
                values.append(value)
        return values

    async def aget(self, timeout: float | None = None, propagate: bool = True) -> list[Any]:
        """Await every member's value without blocking the event loop."""
        import asyncio  # loaded by the awaiting loop; not at import: ~10 MiB per process

        return await asyncio.to_thread(
            self.get, timeout=timeout, propagate=propagate, disable_sync_subtasks=False
        )

    # -- acting on every member -------------------------------------------------
    def forget(self) -> None:
        """Delete every member's stored result."""
        for member in self.results:
            member.forget()

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
        for member in self.results:
            if isinstance(member, ResultSet):
                ids.extend(member._member_ids())
            else:
                ids.append(member.id)
        return ids

    # -- container --------------------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, index: int) -> Any:
        return self.results[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ResultSet):
            return other.results == self.results
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by members

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: [{', '.join(r.id for r in self.results)}]>"


def _summary(member: ResultSet) -> str:
    if member.failed():
        return states.FAILURE
    return states.SUCCESS if member.successful() else states.PENDING


class GroupResult(ResultSet):
    """The results of a group, in the order it was sent, under the group's id."""

    def __init__(
        self,
        id: str | None = None,
        results: Sequence[Any] | None = None,
        parent: AsyncResult[Any] | GroupResult | None = None,
        app: Celery | None = None,
        **_ignored: Any,
    ) -> None:
        super().__init__(results, app=app)
        self.id = id
        #: The result before this group in a chain (the chord header's, for a body).
        self.parent = parent

    @property
    def children(self) -> list[Any]:
        """The member results (Celery's alias)."""
        return self.results

    def as_tuple(self) -> tuple[Any, ...]:
        """Return Celery's serialized form: ``((id, parent tuple), [member tuples])``."""
        parent = self.parent.as_tuple() if self.parent is not None else None
        return (self.id, parent), [member.as_tuple() for member in self.results]

    def as_list(self) -> list[str]:
        """Return this group's id, then its ancestors'."""
        ids = [str(self.id)]
        if self.parent is not None:
            ids.extend(self.parent.as_list())
        return ids

    def save(self) -> GroupResult:
        """Store the member ids so :meth:`restore` can find them by group id."""
        if self.id is None:
            raise ValueError("cannot save a group result without an id; give GroupResult an id")
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

    def __reduce__(self) -> Any:
        return (type(self), (self.id, self.results, self.parent))

    def __bool__(self) -> bool:
        return bool(self.id or self.results)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, GroupResult):
            return (other.id, other.results, other.parent) == (self.id, self.results, self.parent)
        if isinstance(other, str):
            return other == self.id
        return NotImplemented

    __hash__ = None

    def __str__(self) -> str:
        return str(self.id)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.id} [{', '.join(r.id for r in self.results)}]>"


_GROUP_TYPE.append(GroupResult)
