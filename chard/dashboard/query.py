"""What the task list asks for (:class:`TaskFilter`), and what a history search answers.

Here, below both the views and the history stores, so that one filter is matched
in memory (:meth:`TaskFilter.matches`) and turned into each store's query with the
same meaning: ``state`` and ``worker`` equal, ``name`` and ``search`` (args or
kwargs) substrings, ``id`` a prefix, ``since``/``until`` bounds on the time of the
task's last change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from chard.events.state import TaskState


@dataclass(frozen=True)
class TaskFilter:
    """What the task list is narrowed to; every field optional."""

    state: str | None = None
    name: str | None = None
    worker: str | None = None
    id: str | None = None
    search: str | None = None
    since: float | None = None
    until: float | None = None

    def is_empty(self) -> bool:
        """True when nothing narrows the list."""
        return self == TaskFilter()

    def matches(self, task: TaskState) -> bool:
        """Return whether ``task`` passes every field set."""
        found = (
            (self.state is None or task.state == self.state)
            and (self.name is None or self.name in (task.name or ""))
            and (self.worker is None or self.worker == task.worker)
            and (self.id is None or task.uuid.startswith(self.id))
            and (self.since is None or (task.timestamp or 0) >= self.since)
            and (self.until is None or (task.timestamp or 0) <= self.until)
        )
        if found and self.search is not None:
            return self.search in (task.args or "") or self.search in (task.kwargs or "")
        return found


@dataclass
class Found:
    """One page of a history search: how many match, that page's records, and the totals.

    ``tasks`` are the page, the most recently changed first;
    ``counts`` (tasks per state) and ``names`` (task names) are over the whole store,
    for the list's header and its name suggestions.
    """

    total: int
    tasks: list[TaskState]
    counts: dict[str, int] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)
