"""Celery's small app methods, beside the app: result handles, timezone, the current app.

Kept out of :mod:`chard.app` (which composes the app's parts) because each is a
thin shim over another module: the result classes take ``app=``, the current app is
:mod:`chard._context`'s, the timezone is a setting.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, tzinfo
from typing import TYPE_CHECKING, Any, cast
from zoneinfo import ZoneInfo

from chard import _context
from chard import result as _result
from chard.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from chard.app import Celery
    from chard.config import Settings


class CeleryCompat:
    """Mixed into :class:`chard.app.Celery`; ``self`` is the app."""

    conf: Settings

    # -- results ----------------------------------------------------------------
    def AsyncResult(self, task_id: str, **kwargs: Any) -> _result.AsyncResult[Any]:
        """Return the result handle of ``task_id``."""
        return _result.AsyncResult(task_id, app=cast("Celery", self), **kwargs)

    def GroupResult(
        self,
        group_id: str | None = None,
        results: Sequence[_result.AsyncResult[Any]] | None = None,
        **kwargs: Any,
    ) -> _result.GroupResult:
        """Return a group's result handle: ``app.GroupResult(id, results, parent=)``."""
        return _result.GroupResult(group_id, results, app=cast("Celery", self), **kwargs)

    def ResultSet(
        self, results: Iterable[_result.AsyncResult[Any]] | None = None, **kwargs: Any
    ) -> _result.ResultSet:
        """Return a set of results to wait for together: ``app.ResultSet([r1, r2])``."""
        return _result.ResultSet(results, app=cast("Celery", self), **kwargs)

    # -- timezone ---------------------------------------------------------------
    @property
    def timezone(self) -> tzinfo:
        """The configured ``timezone`` as a tzinfo (UTC when unset); settable, as Celery's."""
        name = self.conf.timezone
        if not name:
            return UTC
        if isinstance(name, tzinfo):
            return name
        try:
            return ZoneInfo(str(name))
        except Exception as exc:
            raise ImproperlyConfigured(
                f"unknown timezone {name!r}; use an IANA name like 'Europe/Moscow'"
            ) from exc

    @timezone.setter
    def timezone(self, value: str | tzinfo | None) -> None:
        self.conf.timezone = value

    # -- the current app --------------------------------------------------------
    def set_current(self) -> None:
        """Make this app the current one (what ``shared_task`` and ``current_app`` use)."""
        _context.set_current_app(self)

    def set_default(self) -> None:
        """Make this app the default for every thread (Celery's; the same as current here)."""
        _context.set_current_app(self)
