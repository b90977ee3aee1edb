"""What the task list asks for (:class:`TaskFilter`), what a history search answers, and
how a task names the others of its workflow (:class:`Links`, for :mod:`.graph`).

Here, below both the views and the history stores, so that one filter is matched
in memory (:meth:`TaskFilter.matches`) and turned into each store's query with the
same meaning: ``state`` and ``worker`` equal, ``name`` and ``search`` (args or
kwargs) substrings, ``id`` a prefix, ``since``/``until`` bounds on the time of the
task's last change.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

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
        return self.matches_brief(
            Brief(task.uuid, task.timestamp or 0.0, task.state, task.name, task.worker,
                  task.args, task.kwargs)
        )  # fmt: skip

    def matches_brief(self, task: Brief) -> bool:
        """:meth:`matches` for the filtered fields alone (a store's index entry)."""
        found = (
            (self.state is None or task.state == self.state)
            and (self.name is None or self.name in (task.name or ""))
            and (self.worker is None or self.worker == task.worker)
            and (self.id is None or task.uuid.startswith(self.id))
            and (self.since is None or task.changed >= self.since)
            and (self.until is None or task.changed <= self.until)
        )
        if found and self.search is not None:
            return self.search in (task.args or "") or self.search in (task.kwargs or "")
        return found


class Brief(NamedTuple):
    """What a filter reads of a task: a store's index entry, cheaper than a TaskState."""

    uuid: str
    changed: float
    state: str | None
    name: str | None
    worker: str | None
    args: str | None
    kwargs: str | None


@dataclass
class Found:
    """One page of a history search: how many match, that page's records, and the totals.

    ``tasks`` are the page, the most recently changed first;
    ``counts`` (tasks per state) and ``names`` (task names) are over the whole store,
    for the list's header and its name suggestions. ``exact`` is false when a store
    stopped scanning once the page was filled (Redis, for an argument substring or
    an id prefix): ``total`` is then a lower bound, one past what was read.
    """

    total: int
    tasks: list[TaskState]
    counts: dict[str, int] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)
    exact: bool = True


@dataclass(frozen=True)
class Links:
    """What the workflow found so far names: its task ids, roots and groups.

    ``named`` are the ids its tasks point at (root, parent, chord body); a task
    belongs when it is named, shares a root or a group, or points at one of ``ids``.
    """

    ids: frozenset[str]
    named: frozenset[str]
    roots: frozenset[str]
    groups: frozenset[str]

    def reach(self, task: TaskState) -> bool:
        """Whether ``task`` is linked to the workflow found so far."""
        root, group, body = keys(task)
        return (
            task.uuid in self.named
            or root in self.roots
            or group in self.groups
            or body in self.ids
            or task.parent_id in self.ids
        )


def keys(task: TaskState) -> tuple[str | None, str | None, str | None]:
    """(root id, group id, chord body id) of ``task``."""
    group = task.extra.get("group_id")
    body = task.extra.get("chord_body_id")
    return (
        task.root_id,
        group if isinstance(group, str) else None,
        body if isinstance(body, str) else None,
    )


def links(found: Iterable[TaskState]) -> Links:
    """The :class:`Links` of the tasks ``found``."""
    tasks = list(found)
    named = {k for t in tasks for k in (keys(t)[0], keys(t)[2], t.parent_id) if k}
    return Links(
        ids=frozenset(t.uuid for t in tasks),
        named=frozenset(named),
        roots=frozenset(r for r in (keys(t)[0] for t in tasks) if r),
        groups=frozenset(g for g in (keys(t)[1] for t in tasks) if g),
    )
