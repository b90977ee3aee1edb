"""Run the dashboard: check the exposure, build the app, serve it with uvicorn."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import uvicorn

from chard._utils.log import redact_url
from chard.dashboard.api import create_app
from chard.dashboard.auth import check_exposure, credentials_from
from chard.dashboard.history import History
from chard.dashboard.history_sqlite import SQLiteHistory
from chard.dashboard.monitor import Monitor

if TYPE_CHECKING:
    from chard.app import Celery

logger = logging.getLogger(__name__)

#: Seconds open connections (the live stream) get to finish when the dashboard stops.
GRACEFUL_SHUTDOWN = 2


def serve(
    app: Celery,
    address: str,
    port: int,
    *,
    max_tasks: int = 100_000,
    inspect_interval: float = 5.0,
    enable_events: bool = True,
    keep_history: bool = True,
    history_days: float | None = 7.0,
    history_max: int = 1_000_000,
) -> None:
    """Serve the dashboard on ``address:port`` until interrupted (SIGINT or SIGTERM).

    Raises:
        ImproperlyConfigured: it would listen beyond loopback without credentials, or
            the credentials are malformed.
    """
    credentials = credentials_from(app.conf)
    check_exposure(address, credentials)
    history = open_history(app) if keep_history else None
    monitor = Monitor(
        app,
        max_tasks=max_tasks,
        inspect_interval=inspect_interval,
        enable_events=enable_events,
        history=history,
        history_days=history_days,
        history_max=history_max,
    )
    asgi = create_app(monitor, credentials)
    config = uvicorn.Config(
        asgi,
        host=address,
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
        access_log=False,
    )
    login = "login required" if credentials.enabled else "no login (loopback only)"
    kept = (
        f"history in {redact_url(app.backend_url or '')}"
        if history is not None
        else "history in memory only"
    )
    logger.warning("chard dashboard on http://%s:%d/ (%s; %s)", address, port, login, kept)
    uvicorn.Server(config).run()


def open_history(app: Celery) -> History | None:
    """Return the history store in ``app``'s result backend, or None if it has none.

    ``sqlite://`` uses the backend's file, ``redis://``/``rediss://``/``unix://`` its
    Redis (and key prefix), ``postgresql://`` its schema; anything else (no backend,
    ``memory://``) has no history.
    """
    url = app.backend_url
    if not url:
        return None
    scheme = url.partition("://")[0].lower()
    if scheme == "sqlite":
        return SQLiteHistory(url)
    if scheme in ("redis", "rediss", "unix"):
        from chard.dashboard.history_redis import RedisHistory  # needs the redis extra

        return RedisHistory(url, app.conf.result_backend_transport_options)
    if scheme in ("postgresql", "postgres", "db+postgresql", "db+postgres"):
        from chard.dashboard.history_postgres import PostgresHistory  # needs the postgres extra

        return PostgresHistory(url.removeprefix("db+"), app.conf.result_backend_transport_options)
    return None
