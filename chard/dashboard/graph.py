"""A task's canvas workflow as a small graph, laid out in columns for the task's page.

The tasks are linked by what their events tell: ``parent_id`` (the task that sent
it: a chain's previous step, a callback's task), ``root_id`` (the workflow's first
task), ``group_id`` (a group's members) and ``chord_body_id`` (a chord's header
members name its body). :func:`related` gathers the tasks of one workflow, from
memory (:func:`in_memory`) or from a history store that can query its links;
:func:`layout` places them: a task one column right of every task that leads to it,
so a chain reads left to right and a chord as its header column, then its body.

Pure: positions in pixels for the page to draw; it escapes nothing because it
renders nothing (the page writes every name as SVG text, never as markup).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from chard.dashboard.query import Links, keys, links
from chard.events.state import TaskState

#: Most tasks drawn; a larger workflow is cut (the answer says so).
MAX_NODES = 60
#: A box's size and the gaps between boxes, in pixels.
BOX_W, BOX_H, GAP_X, GAP_Y, PAD = 190, 46, 48, 14, 8


#: Returns the tasks linked to a :class:`Links` (at most a given number): from memory
#: (:func:`in_memory`) or from a history store's query.
Neighbours = Callable[[Links, int], Iterable[TaskState]]


def related(task: TaskState, neighbours: Neighbours, limit: int = MAX_NODES) -> list[TaskState]:
    """Return ``task``'s workflow (``task`` first), at most ``limit`` tasks.

    A task belongs when it shares the root or the group of one that belongs, is its
    parent, child or chord body, or names one that belongs as its chord body. Rounds
    of ``neighbours`` repeat until nothing joins (a chord's header members have roots
    of their own, reached through their body).
    """
    found: dict[str, TaskState] = {task.uuid: task}
    while len(found) < limit:
        size = len(found)
        for other in neighbours(links(found.values()), limit):
            if len(found) >= limit:
                break
            found.setdefault(other.uuid, other)
        if len(found) == size:
            break
    return list(found.values())


def in_memory(kept: Mapping[str, TaskState]) -> Neighbours:
    """:data:`Neighbours` over the tasks kept in memory (one pass over them per round)."""

    def neighbours(linked: Links, limit: int) -> list[TaskState]:
        named = [kept[i] for i in linked.named if i in kept]
        near = (t for t in kept.values() if t.uuid not in linked.ids and linked.reach(t))
        return [*named, *itertools.islice(near, limit)]

    return neighbours


def layout(tasks: list[TaskState], current: str, cut: bool = False) -> dict[str, Any]:
    """Return nodes with positions, edges, and the drawing's size, for ``tasks``."""
    ids = {t.uuid for t in tasks}
    edges: list[tuple[str, str]] = []
    for task in tasks:
        if task.parent_id in ids and task.parent_id != task.uuid:
            edges.append((str(task.parent_id), task.uuid))
        body = keys(task)[2]
        if body in ids and body != task.uuid:
            edges.append((task.uuid, str(body)))
    edges = list(dict.fromkeys(edges))
    column = {t.uuid: 0 for t in tasks}
    for _ in range(len(tasks)):  # longest path; a cycle (malformed links) stops at the bound
        moved = False
        for src, dst in edges:
            if column[dst] < column[src] + 1:
                column[dst] = column[src] + 1
                moved = True
        if not moved:
            break
    order = sorted(tasks, key=lambda t: (t.timestamp or 0.0, t.uuid))
    rows: dict[int, int] = {}
    nodes = []
    for task in order:
        col = column[task.uuid]
        row = rows[col] = rows.get(col, -1) + 1
        nodes.append({
            "id": task.uuid, "name": task.name, "state": task.state,
            "x": PAD + col * (BOX_W + GAP_X), "y": PAD + row * (BOX_H + GAP_Y),
            "current": task.uuid == current,
        })  # fmt: skip
    columns = max(column.values(), default=0) + 1
    tallest = max(rows.values(), default=0) + 1
    return {
        "nodes": nodes,
        "edges": [{"from": src, "to": dst} for src, dst in edges],
        "width": 2 * PAD + columns * BOX_W + (columns - 1) * GAP_X,
        "height": 2 * PAD + tallest * BOX_H + (tallest - 1) * GAP_Y,
        "box": {"width": BOX_W, "height": BOX_H},
        "cut": cut,
    }
