"""Routing: which queue a task goes to, from ``task_routes`` (Celery's forms).

``task_routes`` may be a dict (exact names, glob patterns like ``'proj.tasks.*'``,
or compiled regexes as keys; a queue name or an options dict as values), a list of
``(pattern, route)`` pairs, a callable ``(name, args, kwargs, options, task=None, **kw)
-> dict | str | None``, the dotted path of such a callable (``'proj.routers.route_task'``)
or of a router class with ``route_for_task(name, args, kwargs)`` (Celery's old routers,
instantiated once), or a list of any of those, tried in order. Precedence:
``apply_async(queue=)``, then a route, then the task's own ``queue``, then
``task_default_queue``.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from typing import Any

from chard._utils.imports import import_string
from chard.exceptions import ImproperlyConfigured

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
        elif isinstance(entry, (list, tuple)):
            found = _match_mapping(dict(entry), name)  # Celery's list of (pattern, route) pairs
        else:
            router = _router(entry)
            if hasattr(router, "route_for_task"):  # a Celery 3 router object
                found = _normalise(router.route_for_task(name, args, kwargs))
            else:
                found = _normalise(router(name, args, kwargs, options, task=task))
        if found:
            return found
    return {}


#: Routers named by a dotted path, resolved once (a send must not import each time).
_resolved: dict[str, Any] = {}


def _router(entry: Any) -> Any:
    """Return the router an entry names: itself, or what its dotted path names."""
    if isinstance(entry, str):
        router = _resolved.get(entry)
        if router is None:
            router = _resolved[entry] = _import_router(entry)
        return router
    if isinstance(entry, type) and hasattr(entry, "route_for_task"):
        return entry()
    if not callable(entry) and not hasattr(entry, "route_for_task"):
        raise ImproperlyConfigured(
            f"task_routes entry {entry!r} is not a dict, a list of pairs, a callable or the "
            "dotted path of one; see Celery's task_routes documentation"
        )
    return entry


def _import_router(path: str) -> Any:
    try:
        router: Any = import_string(path)
    except ImportError as exc:
        raise ImproperlyConfigured(
            f"task_routes names router {path!r}, which cannot be imported: {exc}; "
            "give it as 'package.module.function' (or a class with route_for_task)"
        ) from exc
    if isinstance(router, type):
        router = router()  # Celery instantiates router classes named by a string
    if not callable(router) and not hasattr(router, "route_for_task"):
        raise ImproperlyConfigured(
            f"task_routes names {path!r}, which is {router!r}, not a router function or class"
        )
    return router
