"""The HTTP side of the dashboard: routes, request parsing, auth, the live stream.

Handlers parse the request and hand plain values to :mod:`.views`, which does the
work in a thread (it may wait on the broker); an :class:`~.views.ApiError` becomes
``{"error": message}`` with its status. Everything under ``/api`` and ``/metrics``
needs a login when credentials are configured (see :mod:`.auth`); the page itself
(``/``, ``/static``) holds no data and is served to anyone.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from chard._utils.log import redact_url
from chard.dashboard import metrics, views
from chard.dashboard.auth import COOKIE, CSRF_HEADER, Credentials
from chard.dashboard.monitor import Monitor
from chard.dashboard.openapi import openapi_document
from chard.exceptions import ChardError

STATIC = Path(__file__).parent / "static"
#: Seconds between two checks for news on the live stream, and between keep-alives.
STREAM_TICK = 1.0
KEEPALIVE = 15.0

Endpoint = Callable[[Request], Awaitable[Response]]


def create_app(
    monitor: Monitor, credentials: Credentials, *, reply_timeout: float = 3.0
) -> Starlette:
    """Return the dashboard's ASGI app; it starts and stops ``monitor`` with itself."""
    api = Handlers(monitor, credentials, reply_timeout)
    guarded = api.guarded

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        monitor.start()
        try:
            yield
        finally:
            await run_in_threadpool(monitor.stop)

    routes = [
        Route("/", api.index),
        Route("/openapi.json", api.openapi),
        Route("/api/session", guarded(api.session)),
        Route("/api/login", api.login, methods=["POST"]),
        Route("/api/overview", guarded(api.overview)),
        Route("/api/workers", guarded(api.workers)),
        Route(
            "/api/workers/{hostname}/{action}",
            guarded(api.worker_action, action=True),
            methods=["POST"],
        ),
        Route("/api/tasks", guarded(api.tasks)),
        Route("/api/tasks/{task_id}", guarded(api.task)),
        Route("/api/throughput", guarded(api.throughput)),
        Route("/api/tasks/{task_id}/revoke", guarded(api.revoke, action=True), methods=["POST"]),
        Route("/api/tasks/{task_id}/retry", guarded(api.retry, action=True), methods=["POST"]),
        Route("/api/queues", guarded(api.queues)),
        Route("/api/beat", guarded(api.beat)),
        Route("/api/beat/{name}/{action}", guarded(api.beat_toggle, action=True), methods=["POST"]),
        Route("/api/dead-letters/redrive", guarded(api.redrive, action=True), methods=["POST"]),
        Route("/api/stream", guarded(api.stream)),
        Route("/metrics", guarded(api.metrics_page)),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


class Handlers:
    """The route handlers, over one monitor and one set of credentials."""

    def __init__(self, monitor: Monitor, credentials: Credentials, reply_timeout: float) -> None:
        self.monitor = monitor
        self.credentials = credentials
        self.reply_timeout = reply_timeout

    def guarded(self, handler: Endpoint, *, action: bool = False) -> Endpoint:
        """Wrap ``handler``: login required; ``action``: the CSRF value too."""
        credentials = self.credentials

        async def endpoint(request: Request) -> Response:
            headers = request.headers
            if not credentials.allows(headers.get("authorization"), headers.get("cookie")):
                challenge = {"WWW-Authenticate": 'Basic realm="chard"'} if credentials.basic else {}
                return JSONResponse({"error": "unauthorized"}, 401, headers=challenge)
            if action and not credentials.csrf_ok(
                headers.get(CSRF_HEADER), headers.get("origin"), headers.get("host")
            ):
                return _error(403, "missing or wrong X-CSRF-Token; GET /api/session gives it")
            try:
                return await handler(request)
            except views.ApiError as exc:
                return _error(exc.status, exc.message)

        return endpoint

    async def session(self, request: Request) -> Response:
        return JSONResponse({"auth": self.credentials.enabled, "csrf": self.credentials.csrf})

    async def login(self, request: Request) -> Response:
        try:
            form = await _body(request)
        except views.ApiError as exc:
            return _error(exc.status, exc.message)
        credentials = self.credentials
        ok = credentials.login(
            _text(form.get("token")), _text(form.get("user")), _text(form.get("password"))
        )
        if not ok or not credentials.enabled:
            return JSONResponse({"error": "unauthorized"}, 401)
        response = JSONResponse({"ok": True, "csrf": credentials.csrf})
        response.set_cookie(COOKIE, credentials.session, httponly=True, samesite="strict")
        return response

    async def overview(self, request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(_overview, self.monitor))

    async def workers(self, request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(views.workers, self.monitor))

    async def worker_action(self, request: Request) -> Response:
        body = await _body(request)
        hostname, action = request.path_params["hostname"], request.path_params["action"]
        reply = await run_in_threadpool(
            views.worker_action, self.monitor, hostname, action, body, self.reply_timeout
        )
        return JSONResponse(reply)

    async def tasks(self, request: Request) -> Response:
        query = request.query_params
        where = views.TaskFilter(
            state=query.get("state") or None,
            name=query.get("name") or None,
            worker=query.get("worker") or None,
            id=query.get("id") or None,
            search=query.get("search") or None,
            since=_number(query.get("since"), "since"),
            until=_number(query.get("until"), "until"),
        )
        offset = _integer(query.get("offset"), "offset", 0)
        limit = _integer(query.get("limit"), "limit", 50)
        return JSONResponse(
            await run_in_threadpool(views.tasks, self.monitor, where, offset, limit)
        )

    async def throughput(self, request: Request) -> Response:
        query = request.query_params
        span = _number(query.get("span"), "span")
        step = _number(query.get("step"), "step")
        span, step = (600.0 if span is None else span), (10.0 if step is None else step)
        return JSONResponse(await run_in_threadpool(views.chart, self.monitor, span, step))

    async def task(self, request: Request) -> Response:
        return JSONResponse(views.task(self.monitor, request.path_params["task_id"]))

    async def revoke(self, request: Request) -> Response:
        body = await _body(request)
        signal = _text(body.get("signal")) or "SIGTERM"
        terminate = body.get("terminate") in (True, "true", "1", "on")
        task_id = request.path_params["task_id"]
        return JSONResponse(
            await run_in_threadpool(views.revoke, self.monitor, task_id, terminate, signal)
        )

    async def retry(self, request: Request) -> Response:
        task_id = request.path_params["task_id"]
        return JSONResponse(await run_in_threadpool(views.retry, self.monitor, task_id))

    async def queues(self, request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(views.queues, self.monitor))

    async def beat(self, request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(views.beat, self.monitor))

    async def beat_toggle(self, request: Request) -> Response:
        name, action = request.path_params["name"], request.path_params["action"]
        return JSONResponse(await run_in_threadpool(views.beat_toggle, self.monitor, name, action))

    async def redrive(self, request: Request) -> Response:
        ids = (await _body(request)).get("ids")
        if ids is not None and not (isinstance(ids, list) and all(isinstance(i, str) for i in ids)):
            return _error(400, "ids must be a list of dead letter ids, or null for all")
        return JSONResponse(await run_in_threadpool(views.redrive, self.monitor, ids))

    async def metrics_page(self, request: Request) -> Response:
        text = await run_in_threadpool(_metrics_text, self.monitor)
        return Response(text, media_type=metrics.CONTENT_TYPE)

    async def stream(self, request: Request) -> Response:
        return StreamingResponse(_updates(request, self.monitor), media_type="text/event-stream")

    async def index(self, request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_document(self.credentials.enabled))


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _number(text: str | None, name: str) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise views.ApiError(400, f"{name}={text!r} is not a number")
    return value


def _integer(text: str | None, name: str, default: int) -> int:
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise views.ApiError(400, f"{name}={text!r} is not a whole number") from None


async def _body(request: Request) -> dict[str, Any]:
    """The request's JSON object (``{}`` when empty); the API takes JSON bodies only."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise views.ApiError(400, "the request body is not JSON") from None
    if not isinstance(body, dict):
        raise views.ApiError(400, "the request body must be a JSON object")
    return body


def _overview(monitor: Monitor) -> dict[str, Any]:
    now = monitor.clock()
    with monitor.lock:
        state = monitor.state
        return {
            "broker": redact_url(monitor.app.broker_url),
            "version": monitor.version,
            "events": state.event_count,
            "tasks_kept": len(state.tasks),
            "max_tasks": state.max_tasks,
            "counts": dict(Counter(t.state for t in state.tasks.values())),
            "workers_online": views.online_count(monitor, now),
            "rate": state.rate(now),
        }


def _metrics_text(monitor: Monitor) -> str:
    names = monitor.known_queues()
    broker = monitor.app.broker
    try:
        lengths = {name: broker.queue_size(name) for name in names}
        dead = len(broker.dead_letters(views.MAX_LISTED))
    except ChardError as exc:
        raise views.ApiError(503, f"cannot reach the broker: {exc}") from exc
    with monitor.lock:
        online = views.online_count(monitor, monitor.clock())
        kept: dict[tuple[str, str], int] = {}
        for task in monitor.state.tasks.values():
            key = (task.name or "unknown", task.state)
            kept[key] = kept.get(key, 0) + 1
        return metrics.render(
            monitor.metrics,
            kept_by_state=kept,
            queue_lengths=lengths,
            dead_letters=dead,
            workers_online=online,
        )


async def _updates(request: Request, monitor: Monitor) -> AsyncIterator[str]:
    """Server-sent events: ``update`` with the overview whenever something changed."""
    seen = -1
    quiet = 0.0
    while not await request.is_disconnected():
        if monitor.version != seen:
            seen = monitor.version
            data = await run_in_threadpool(_overview, monitor)
            yield f"event: update\ndata: {json.dumps(data)}\n\n"
            quiet = 0.0
        elif quiet >= KEEPALIVE:
            yield ": keep-alive\n\n"
            quiet = 0.0
        await asyncio.sleep(STREAM_TICK)
        quiet += STREAM_TICK
