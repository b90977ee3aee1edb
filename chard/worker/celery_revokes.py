"""Revocations from Celery clients: their pidbox ``revoke`` casts, into chard's durable log.

In a mixed fleet (``chard_celery_compat``), a Celery client's ``app.control.revoke(id)``
is a pub/sub message that only a listening process hears. The node's main process
listens (a thread, its own broker connection, subscribed before the node says ready)
and appends each ``revoke`` it hears to chard's ``revoke`` broadcast channel: from
there every chard worker honours it as its own (:mod:`chard.worker.revocations`),
durably, ``terminate`` included. Each chard node in the fleet appends the same
revocation once; a repeated revocation changes nothing. Other Celery control commands
are ignored (see :mod:`chard.protocol.pidbox`).
"""

from __future__ import annotations

import logging
import threading
import time

from chard.brokers import Broker, open_broker
from chard.exceptions import BrokerConnectionError
from chard.protocol.control import REVOKE_CHANNEL, REVOKE_EXPIRES
from chard.protocol.pidbox import read_revoke
from chard.worker.node import Node

logger = logging.getLogger("chard.worker")

#: Longest single wait for a cast: how soon the thread sees a stop.
READ_TIMEOUT = 1.0
MAX_BACKOFF = 30.0


class CeleryRevokes:
    """Listen for Celery's ``revoke`` casts for ``node``; see the module docstring."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._broker: Broker | None = None

    def start(self) -> None:
        """Subscribe now (casts are not stored), then follow them on a thread."""
        app = self.node.app
        self._broker = open_broker(app.broker_url, app.conf.broker_transport_options)
        try:
            self._broker.celery_casts(0)
        except NotImplementedError as exc:
            logger.warning("Celery's revokes do not reach this worker: %s", exc)
            return
        except Exception as exc:  # the broker is down: the thread subscribes when it is up
            logger.warning("Cannot listen for Celery's revokes yet: %s", exc)
        self._thread = threading.Thread(target=self._follow, name="chard-celery-revokes")
        self._thread.daemon = True
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._broker is not None:
            self._broker.close()

    def _follow(self) -> None:
        pause = 1.0
        while not self._stopping.is_set():
            try:
                self.poll(READ_TIMEOUT)
            except Exception as exc:  # the broker is down, mostly: never end the thread
                level = logging.WARNING if isinstance(exc, BrokerConnectionError) else logging.ERROR
                logger.log(level, "Cannot read Celery's revokes: %s; retrying in %.0fs", exc, pause)
                self._stopping.wait(pause)
                pause = min(pause * 2, MAX_BACKOFF)
                continue
            pause = 1.0

    def poll(self, timeout: float) -> int:
        """Move the revocations cast within ``timeout`` to chard's log; return how many."""
        assert self._broker is not None
        moved = 0
        for payload in self._broker.celery_casts(timeout):
            revocation = read_revoke(payload, self.node.hostname, time.time(), REVOKE_EXPIRES)
            if revocation is None or not revocation.ids:
                continue
            self._broker.broadcast(REVOKE_CHANNEL, revocation.to_payload())
            logger.info("Revoked by a Celery client: %s", ", ".join(revocation.ids))
            moved += 1
        return moved
