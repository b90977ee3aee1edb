"""Results of work run inline (``apply()``, ``task_always_eager``): ready when made.

Nothing is stored in the backend for them; ``get()`` returns (or raises) the value
already at hand.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar, cast

from chard import states
from chard.exceptions import TaskRevokedError
from chard.result.asyncresult import AsyncResult
from chard.result.resultset import GroupResult

if TYPE_CHECKING:
    from chard.app import Celery

R = TypeVar("R")


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

    def __reduce__(self) -> Any:
        assert self._cache is not None
        cache = self._cache
        return (type(self), (self.id, cache["result"], cache["status"], cache["traceback"]))

    def __repr__(self) -> str:
        return f"<EagerResult: {self.id}>"


class EagerGroupResult(GroupResult):
    """A group run inline: every member is an :class:`EagerResult`, nothing is stored."""

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
