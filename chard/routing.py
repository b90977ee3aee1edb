"""Routing: which queue a task goes to, from ``task_routes`` (Celery's forms).

``task_routes`` may be a dict (exact names, glob patterns like ``'proj.tasks.*'``,
or compiled regexes as keys; a queue name or an options dict as values), a
callable ``(name, args, kwargs, options, task=None, **kw) -> dict | str | None``,
or a list of those, tried in order. Precedence: ``apply_async(queue=)``, then a
route, then the task's own ``queue``, then ``task_default_queue``.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping
from typing import Any

Route = Mapping[str, Any]


def _normalise(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return {"queue": value}
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"a route must be a queue name or an options dict, not {value!r}")


def _match_mapping(routes: Mapping[Any, Any], name: str) -> dict[str, Any] | None:
    if name in routes:
        return _normalise(routes[name])
    for pattern, value in routes.items():
        if isinstance(pattern, re.Pattern):
            if pattern.match(name):
                return _normalise(value)
        elif (
            isinstance(pattern, str)
            and any(c in pattern for c in "*?[")
            and fnmatch.fnmatchcase(name, pattern)
        ):
            return _normalise(value)
    return None


def route(
    routes: Any, name: str, args: Any, kwargs: Any, options: Mapping[str, Any], task: Any = None
) -> dict[str, Any]:
    """Return the routing options ``task_routes`` gives ``name`` (``{}`` when none match)."""
    if routes is None:
        return {}
    entries = routes if isinstance(routes, (list, tuple)) else [routes]
    for entry in entries:
        found: dict[str, Any] | None
        if isinstance(entry, Mapping):
            found = _match_mapping(entry, name)
        elif callable(entry):
            router: Callable[..., Any] = entry
            found = _normalise(router(name, args, kwargs, options, task=task))
        else:
            raise TypeError(f"task_routes entry {entry!r} is not a dict or a callable")
        if found:
            return found
    return {}
