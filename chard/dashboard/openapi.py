"""The OpenAPI 3.1 document of the dashboard's JSON API, served at ``/openapi.json``.

Written by hand from :mod:`.api`'s routes (one table below), so that it says what
each route takes and answers without a schema library; a test checks that every
route of the app is documented here and nothing more.
"""

from __future__ import annotations

from typing import Any

from chard import __version__
from chard.dashboard.charts import MAX_SPAN
from chard.dashboard.views import KNOWN_STATES, MAX_PAGE

_ERROR = {
    "description": "An error, with a one-line message",
    "content": {
        "application/json": {
            "schema": {"type": "object", "properties": {"error": {"type": "string"}}}
        }
    },
}
_OBJECT = {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}
_ARRAY = {"description": "OK", "content": {"application/json": {"schema": {"type": "array"}}}}
_ACTION_BODY = {
    "required": False,
    "content": {"application/json": {"schema": {"type": "object"}}},
}


def _query(name: str, kind: str, doc: str, **schema: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": {"type": kind, **schema},
        "description": doc,
    }


def _path(name: str, doc: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": doc,
    }


def _op(
    summary: str, *, params: list[dict[str, Any]] | None = None, action: bool = False
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {"200": _OBJECT, "400": _ERROR, "401": _ERROR, "404": _ERROR},
    }
    if params:
        op["parameters"] = params
    if action:
        op["requestBody"] = _ACTION_BODY
        op["responses"]["403"] = _ERROR
        op["parameters"] = [
            *(params or []),
            {
                "name": "X-CSRF-Token",
                "in": "header",
                "required": True,
                "schema": {"type": "string"},
                "description": "The csrf value of GET /api/session",
            },
        ]
    return op


_TASK_FILTERS = [
    _query(
        "state",
        "string",
        "Only tasks in this state (empty: any)",
        enum=["", *sorted(KNOWN_STATES)],
    ),
    _query("name", "string", "Only tasks whose name contains this"),
    _query("worker", "string", "Only tasks received by this worker (its hostname)"),
    _query("id", "string", "Only tasks whose id starts with this"),
    _query("search", "string", "Only tasks whose args or kwargs contain this"),
    _query("since", "number", "Only tasks changed at or after this Unix time"),
    _query("until", "number", "Only tasks changed at or before this Unix time"),
    _query("offset", "integer", "Skip this many (default 0)", minimum=0),
    _query("limit", "integer", "Page size (default 50)", minimum=1, maximum=MAX_PAGE),
]
_HOST = _path("hostname", "The worker's node name (w1@host)")
_ACTION = _path(
    "action",
    "shutdown | pool_grow {n} | pool_shrink {n} | autoscale {max, min} | "
    "rate_limit {task_name, rate_limit} | add_consumer {queue} | cancel_consumer {queue}",
)
_TASK_ID = _path("task_id", "The task's id")

#: (method, path) -> operation: the routes of :func:`chard.dashboard.api.create_app`.
OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("get", "/api/session"): _op("Whether login is on, and this process's CSRF value"),
    ("post", "/api/login"): {
        "summary": "Log in with {token} or {user, password}; sets the session cookie",
        "requestBody": _ACTION_BODY,
        "responses": {"200": _OBJECT, "400": _ERROR, "401": _ERROR},
    },
    ("get", "/api/overview"): _op("Broker (password hidden), counts by state, workers online"),
    ("get", "/api/workers"): {
        **_op("Every worker: status, pool, processed, failed, active, queues"),
        "responses": {"200": _ARRAY, "401": _ERROR},
    },
    ("post", "/api/workers/{hostname}/{action}"): _op(
        "Remote-control one worker", params=[_HOST, _ACTION], action=True
    ),
    ("get", "/api/tasks"): _op(
        "A page of the matching tasks, newest change first, searched in the whole history"
        " (source: history) or, without one, in memory (source: memory). On a Redis"
        " history an args substring or id prefix scans newest first and stops past the"
        " page: total is then a lower bound (exact: false)",
        params=_TASK_FILTERS,
    ),
    ("get", "/api/throughput"): _op(
        "Successes, failures and runtime p50/p90/p99 per step over the last span seconds",
        params=[
            _query(
                "span",
                "number",
                "Seconds back from now (default 600)",
                exclusiveMinimum=0,
                maximum=MAX_SPAN,
            ),
            _query(
                "step",
                "number",
                "Seconds per bucket (default 10; at most 360 buckets)",
                exclusiveMinimum=0,
            ),
        ],
    ),
    ("get", "/api/tasks/{task_id}"): _op(
        "One task: args, kwargs, result or traceback, runtime, timeline, parent/children/root,"
        " and its workflow graph (nodes with positions, edges)",
        params=[_TASK_ID],
    ),
    ("post", "/api/tasks/{task_id}/revoke"): _op(
        "Revoke a task ({terminate: true, signal} to kill it if running)",
        params=[_TASK_ID],
        action=True,
    ),
    ("post", "/api/tasks/{task_id}/retry"): _op(
        "Send a task again under a new id, with the same arguments", params=[_TASK_ID], action=True
    ),
    ("get", "/api/queues"): _op("Queue lengths, dead letters and the countdown/ETA set"),
    ("get", "/api/beat"): _op("Beat's schedule: entries with last and next run, and the leader"),
    ("post", "/api/beat/{name}/{action}"): _op(
        "Enable or disable a schedule entry",
        params=[_path("name", "The entry's name"), _path("action", "enable | disable")],
        action=True,
    ),
    ("post", "/api/dead-letters/redrive"): _op(
        "Re-drive dead letters {ids: [...]} (ids null: all)", action=True
    ),
    ("get", "/api/stream"): {
        "summary": "Server-sent events: `update` with the overview whenever something changed",
        "responses": {"200": {"description": "text/event-stream"}, "401": _ERROR},
    },
    ("get", "/metrics"): {
        "summary": "Prometheus text format: tasks by name and state, runtimes, queues, workers",
        "responses": {"200": {"description": "text/plain; version=0.0.4"}, "401": _ERROR},
    },
}


def openapi_document(auth: bool = True) -> dict[str, Any]:
    """Return the OpenAPI document (a new dict each time); ``auth``: a login is configured."""
    paths: dict[str, dict[str, Any]] = {}
    for (method, path), operation in OPERATIONS.items():
        paths.setdefault(path, {})[method] = operation
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "chard dashboard", "version": __version__},
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "basic": {"type": "http", "scheme": "basic"},
                "cookie": {"type": "apiKey", "in": "cookie", "name": "chard_dashboard"},
            }
        },
        "paths": paths,
    }
    if auth:
        document["security"] = [{"bearer": []}, {"basic": []}, {"cookie": []}]
    return document
