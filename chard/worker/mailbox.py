"""The node's mailbox: it reads the ``control`` channel and answers under the node's name.

:meth:`Mailbox.start` *joins* the channel: it takes the channel's tail, so the node
acts only on requests sent from then on (a worker that starts later never runs an
old ``shutdown``), then a thread follows the channel on a broker connection of its
own (so a blocking read never waits behind the consumer's, and on SQLite it has its
own doorbell). :meth:`Mailbox.stop` leaves: the thread ends and the connection is
closed.

For each request: one not for this node (``destination``) is skipped; one past its
``expires`` is ignored with a log line; an unknown command, bad arguments, or a
command that raises gets ``{"error": ...}`` and a log line; a record that cannot be
decoded (or comes from another version) is logged and skipped. Nothing here stops
the node. The reply is sent only when the client waits for one (``reply``).

One mailbox per node, in its main process: with prefork, the parent, which asks
its children what it needs (:mod:`chard.worker.process_control`), so a node replies
once. Commands run one at a time on the mailbox thread, never on a task's path.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from chard.brokers import Broker, open_broker
from chard.exceptions import BrokerConnectionError, DecodeError
from chard.protocol.control import (
    CONTROL_CHANNEL,
    CONTROL_MAXLEN,
    REPLY_CHANNEL,
    ControlReply,
    ControlRequest,
)
from chard.worker.commands import run_command
from chard.worker.mixed_fleet import MixedFleet
from chard.worker.node import Node

logger = logging.getLogger("chard.worker")

#: Longest single blocking read: how soon the thread sees a stop. An idle node on Redis
#: pays one XREAD per read; a request wakes the read at once.
READ_TIMEOUT = 2.0
#: Longest pause between two attempts to reach a broker that is down (seconds).
MAX_BACKOFF = 30.0


class Mailbox:
    """Follow the ``control`` channel for ``node``; see the module docstring."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._broker: Broker | None = None
        self._cursor: str | None = None
        self._mixed_fleet: MixedFleet | None = None

    def start(self) -> None:
        """Join the channel (take its tail now) and follow it on a thread."""
        app = self.node.app
        if app.conf["chard_celery_compat"]:  # Celery clients revoke, Celery workers die
            self._mixed_fleet = MixedFleet(self.node)
            self._mixed_fleet.start()
        self._broker = open_broker(app.broker_url, app.conf.broker_transport_options)
        try:
            self._cursor = self._broker.broadcast_tail(CONTROL_CHANNEL)
        except NotImplementedError as exc:
            logger.warning("Remote control is off: %s", exc)
            return
        except Exception as exc:  # the broker is down: the thread takes the tail when it is up
            logger.warning("Cannot join the control channel yet: %s", exc)
        self._thread = threading.Thread(target=self._follow, name="chard-mailbox", daemon=True)
        self._thread.start()

    def leave(self) -> None:
        """Stop acting on requests; the thread ends within its read timeout (signal-safe)."""
        self._stopping.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Leave the channel: end the thread (within its read timeout), close the connection."""
        self._stopping.set()
        if self._mixed_fleet is not None:
            self._mixed_fleet.stop(timeout)
        if self._thread is not None:
            self._thread.join(timeout)
        if self._broker is not None:
            self._broker.close()

    def _follow(self) -> None:
        pause, failing = 1.0, False
        while not self._stopping.is_set():
            try:
                self.poll(READ_TIMEOUT)
            except Exception as exc:  # the broker is down, mostly: never end the thread
                level = logging.WARNING if isinstance(exc, BrokerConnectionError) else logging.ERROR
                logger.log(level, "Cannot read control commands: %s; retrying in %.0fs", exc, pause)
                failing = True
                self._stopping.wait(pause)
                pause = min(pause * 2, MAX_BACKOFF)
                continue
            if failing:
                logger.warning("Reading control commands again")
                pause, failing = 1.0, False

    def poll(self, timeout: float) -> int:
        """Read and handle the requests after the last one seen; return how many were read."""
        assert self._broker is not None
        if self._cursor is None:
            self._cursor = self._broker.broadcast_tail(CONTROL_CHANNEL)
        entries = self._broker.broadcast_read(CONTROL_CHANNEL, self._cursor, timeout)
        for cursor, payload in entries:
            self._cursor = cursor
            self.handle(payload)
        return len(entries)

    def handle(self, payload: bytes) -> None:
        """Act on one entry of the channel, and reply if asked; never raises."""
        try:
            request = ControlRequest.from_payload(payload)
        except DecodeError as exc:
            logger.warning("Ignoring a control message: %s", exc)
            return
        node = self.node
        if not request.is_for(node.hostname):
            return
        now = time.time()
        if request.is_expired(now):
            logger.info("Ignoring control command %r: it expired", request.command)
            return
        reply = run_command(node, request.command, dict(request.arguments), request.expires)
        if request.reply:
            self._reply(request, reply)

    def _reply(self, request: ControlRequest, reply: Any) -> None:
        assert self._broker is not None
        answer = ControlReply(request.ticket, self.node.hostname, reply)
        try:
            self._broker.broadcast(REPLY_CHANNEL, answer.to_payload(), maxlen=CONTROL_MAXLEN)
        except Exception as exc:  # the client will see no reply from this node; say why here
            logger.warning("Cannot reply to control command %r: %s", request.command, exc)
