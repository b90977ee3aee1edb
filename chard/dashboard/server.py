"""Run the dashboard: check the exposure, build the app, serve it with uvicorn."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import uvicorn

from chard.dashboard.api import create_app
from chard.dashboard.auth import check_exposure, credentials_from
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
) -> None:
    """Serve the dashboard on ``address:port`` until interrupted (SIGINT or SIGTERM).

    Raises:
        ImproperlyConfigured: it would listen beyond loopback without credentials, or
            the credentials are malformed.
    """
    credentials = credentials_from(app.conf)
    check_exposure(address, credentials)
    monitor = Monitor(
        app,
        max_tasks=max_tasks,
        inspect_interval=inspect_interval,
        enable_events=enable_events,
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
    logger.warning("chard dashboard on http://%s:%d/ (%s)", address, port, login)
    uvicorn.Server(config).run()
