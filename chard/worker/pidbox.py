"""A chard node answering Celery's remote control (``chard_celery_compat``).

What a Celery client sends on ``celery.pidbox`` (``celery inspect ping``, ``stats``,
``active``, ``control rate_limit``, ``revoke``...) is run by the same command registry as
chard's own requests (:mod:`chard.worker.commands`, whose names, arguments and reply
shapes are Celery's), and a call's reply goes back where it asks, ``{node: reply}`` under
its ticket, so Celery's tools list chard's nodes beside Celery's. Besides:

* ``revoke``/``terminate`` are appended to chard's durable ``revoke`` log first, so every
  chard worker honours them, later ones included; the reply is then the node's own.
* Celery's names that chard spells otherwise (``dump_active``...) are translated;
  ``hello`` (a starting Celery worker's mingle) is answered with the ids this node holds
  revoked; ``clock`` with 0 (chard keeps no Lamport clock); ``heartbeat`` and ``election``
  are casts chard has nothing for, ignored.
* A request chard's own client sent (marked, :data:`~chard.protocol.pidbox.CHARD_HEADER`)
  is skipped: the node answers chard's copy of it on chard's channel.
"""

from __future__ import annotations

import logging
import time

from chard.brokers import Broker
from chard.protocol.control import REVOKE_CHANNEL, REVOKE_EXPIRES
from chard.protocol.pidbox import CeleryRequest, read_request, reply_envelope, revocation_of
from chard.worker.commands import Reply, error, ok, run_command
from chard.worker.node import Node

logger = logging.getLogger("chard.worker")

#: Celery's other names for commands chard has (the ``alias`` of Celery's ``Panel``).
ALIASES = {
    "dump_active": "active",
    "dump_reserved": "reserved",
    "dump_schedule": "scheduled",
    "dump_revoked": "revoked",
    "dump_tasks": "registered",
    "dump_conf": "conf",
}
#: Celery casts chard has nothing for (no reply is awaited).
IGNORED = frozenset({"heartbeat", "election"})


class CeleryPidbox:
    """Answer the Celery requests ``broker`` hears for ``node``; see the module docstring."""

    def __init__(self, node: Node, broker: Broker) -> None:
        self.node = node
        self.broker = broker

    def handle(self, payload: bytes) -> None:
        """Act on one message heard on ``celery.pidbox``, and reply if asked; never raises
        for what the message holds (a failed reply is logged)."""
        request = read_request(payload)
        node = self.node
        if request is None or request.from_chard or not request.is_for(node.hostname):
            return
        if request.is_expired(time.time()):
            logger.info("Ignoring Celery control command %r: it expired", request.method)
            return
        if request.method in IGNORED:
            return
        reply = self.run(request)
        if request.ticket and request.reply_to:
            try:
                envelope = reply_envelope(node.hostname, reply, request.ticket, request.reply_to)
                self.broker.celery_reply(request.reply_to, envelope)
            except Exception as exc:  # the client sees no reply from this node; say why here
                logger.warning("Cannot reply to Celery control %r: %s", request.method, exc)

    def run(self, request: CeleryRequest) -> Reply:
        """Run ``request`` as chard's command of the same meaning; return its reply."""
        method, arguments = ALIASES.get(request.method, request.method), request.arguments
        if method == "hello":
            return {"revoked": self.node.revocations.ids(), "clock": 0}
        if method == "clock":
            return {"clock": 0}
        if method in ("revoke", "terminate"):
            return self._revoke(request)
        return run_command(self.node, method, arguments, request.expires)

    def _revoke(self, request: CeleryRequest) -> Reply:
        """Append the revocation to chard's log; reply as the node's ``revoke`` command does."""
        revocation = revocation_of(request, time.time(), REVOKE_EXPIRES)
        if revocation is None:
            return error(f"not a revocation: {request.arguments!r}")
        if not revocation.ids:
            return ok("tasks set() flagged as revoked")
        self.broker.broadcast(REVOKE_CHANNEL, revocation.to_payload())
        logger.info("Revoked by a Celery client: %s", ", ".join(revocation.ids))
        arguments = {
            "task_id": list(revocation.ids),
            "terminate": revocation.terminate,
            "signal": revocation.signal,
        }
        return run_command(self.node, "revoke", arguments, request.expires)
