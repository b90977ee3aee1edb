"""The node's worker events: ``worker-online``, a heartbeat every 2 s, ``worker-offline``.

One thread in the node's main process (the prefork parent, or the only process of
a threads/solo worker) sends ``worker-online`` at start, then a heartbeat every
:data:`HEARTBEAT_INTERVAL` seconds, with Celery's fields (``freq``, ``active``,
``processed``, ``loadavg``, ``sw_ident``, ``sw_ver``, ``sw_sys``), and
``worker-offline`` when the node stops.

Worker events go out whether or not *task* events are on, as Celery's do (its
worker without ``-E`` still sends the ``worker`` group): a monitor sees every node
come and go, and ``-E``/``enable_events``/``disable_events`` switch only the
per-task events. ``chard worker --without-heartbeat`` (Celery's flag) sends none.
"""

from __future__ import annotations

import logging
import os
import platform
import threading
from collections.abc import Callable
from typing import Any

from chard import __version__
from chard.events.dispatcher import EventDispatcher
from chard.protocol.events import HEARTBEAT_INTERVAL

logger = logging.getLogger("chard.worker")

#: Who is sending (Celery's ``SOFTWARE_INFO``).
SOFTWARE_INFO = {"sw_ident": "chard", "sw_ver": __version__, "sw_sys": platform.system()}


def load_average() -> list[float]:
    """Return the 1, 5 and 15 minute load averages, rounded as Celery sends them."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:  # not available on this platform
        return [0.0, 0.0, 0.0]


class Heart:
    """Send the node's worker events from a thread; see the module docstring.

    Args:
        dispatcher: the node's dispatcher; worker events go out whatever its switch says.
        active: returns how many tasks run now.
        processed: returns how many tasks the node has finished since it started.
        interval: seconds between heartbeats (``freq``).
    """

    def __init__(
        self,
        dispatcher: EventDispatcher,
        *,
        active: Callable[[], int],
        processed: Callable[[], int],
        interval: float = HEARTBEAT_INTERVAL,
    ) -> None:
        self.dispatcher = dispatcher
        self.interval = interval
        self._active = active
        self._processed = processed
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._online = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Go online now, then beat from a thread."""
        self._beat()
        self._thread = threading.Thread(target=self._loop, name="chard-heart", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread; send ``worker-offline`` if we were online."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._online:
            self._send("worker-offline")
            self._online = False

    def _loop(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                self._beat()
            except Exception as exc:  # a counter that failed: the next beat tries again
                logger.warning("Cannot send a worker heartbeat: %s", exc)

    def _beat(self) -> None:
        self._send("worker-heartbeat" if self._online else "worker-online")
        self._online = True

    def _send(self, type_: str) -> None:
        fields: dict[str, Any] = {
            "freq": self.interval,
            "active": self._active(),
            "processed": self._processed(),
            "loadavg": load_average(),
            **SOFTWARE_INFO,
        }
        self.dispatcher.publish(type_, fields)  # publish: offline goes out with events off
