"""The dashboard's task history, persisted in the result backend's database.

What :class:`~chard.events.state.State` knows of each task is written, as one JSON
record per task, next to the results: a table ``chard_dashboard_tasks`` in the
SQLite backend's file, a hash and a sorted set (``chard.dashboard.tasks``,
``chard.dashboard.changed``, under the backend's key prefix) in its Redis. A
restarted dashboard, or another one on the same backend, loads the newest records
back before it reads events. Retention is bounded by count (``--max-tasks``) and by
age (``--history-days``); :meth:`History.trim` applies both.

No backend (or one of a kind with no history store yet) means no history: the
dashboard then keeps what it knows in memory only, and says so at start
(:func:`chard.dashboard.server.open_history` picks the store by the backend's URL).
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from chard.dashboard.query import Found, Links, TaskFilter
from chard.events.state import MAX_TIMELINE, TaskState

#: (task id, time of its last change, its JSON record)
Record = tuple[str, float, str]
#: Tasks per state, and the task names, over a whole store.
Summary = tuple[dict[str, int], list[str]]
T = TypeVar("T")

_FIELDS = (
    "name", "state", "worker", "args", "kwargs", "result", "exception", "traceback",
    "runtime", "retries", "eta", "expires", "root_id", "parent_id", "timestamp",
)  # fmt: skip


class History(ABC):
    """Task records in a backend's database: write, read the newest, trim."""

    @abstractmethod
    def save(self, records: Sequence[Record]) -> None:
        """Insert or replace ``records``."""

    @abstractmethod
    def load(self, limit: int) -> list[tuple[str, str]]:
        """Return ``(task id, record)`` of the ``limit`` most recently changed, oldest first."""

    @abstractmethod
    def trim(self, max_count: int, older_than: float | None) -> int:
        """Delete records changed before ``older_than`` and beyond the newest ``max_count``.

        Returns:
            How many were deleted.
        """

    @abstractmethod
    def get(self, uuid: str) -> str | None:
        """Return the record of task ``uuid``, or None if the store has none."""

    @abstractmethod
    def search(self, where: TaskFilter, offset: int, limit: int) -> Found:
        """Return the page ``[offset, offset + limit)`` of the tasks matching ``where``."""

    def neighbours(self, linked: Links, limit: int) -> list[TaskState] | None:
        """Return up to ``limit`` stored tasks linked to ``linked`` (see :mod:`.graph`).

        None: this store cannot query links (the workflow is then drawn from memory).
        """
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the connection."""


class Reused(Generic[T]):
    """A value computed at most once every ``ttl`` seconds, or again after :meth:`forget`.

    For the counts per state and the names over a whole store: each reads every
    entry, too much for every page of the list (another process's writes show
    within ``ttl``).
    """

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._kept: tuple[float, T] | None = None

    def get(self, compute: Callable[[], T]) -> T:
        now = time.monotonic()
        if self._kept is None or now - self._kept[0] >= self.ttl:
            self._kept = (now, compute())
        return self._kept[1]

    def put(self, value: T) -> None:
        self._kept = (time.monotonic(), value)

    def forget(self) -> None:
        self._kept = None


def encode(task: TaskState) -> Record:
    """Return ``task`` as a record (plain values only, so it always encodes)."""
    fields: dict[str, Any] = {name: getattr(task, name) for name in _FIELDS}
    fields["timeline"] = list(task.timeline)
    fields["extra"] = {k: v for k, v in task.extra.items() if _is_plain(v)}
    return task.uuid, float(task.timestamp or 0.0), json.dumps(fields)


def decode(uuid: str, text: str) -> TaskState | None:
    """Return the task a record holds, or None for one that cannot be read."""
    try:
        fields = json.loads(text)
        task = TaskState(uuid)
        for name in _FIELDS:
            if name in fields:
                setattr(task, name, fields[name])
        task.timeline = deque(
            ((str(kind), float(stamp)) for kind, stamp in fields.get("timeline") or ()),
            maxlen=MAX_TIMELINE,
        )
        task.extra = dict(fields.get("extra") or {})
    except (ValueError, TypeError):
        return None
    return task


def _is_plain(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)
