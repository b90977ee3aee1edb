"""Remote control, client side, for the Celery workers of a mixed fleet (``chard_celery_compat``).

With the setting on, every request :mod:`chard.control` appends to chard's ``control``
channel is also sent as Celery's control message on the broker's ``celery.pidbox``
(:mod:`chard.protocol.pidbox`), with the same ticket; a call carries a ``reply_to``
naming this process's reply queue, declared before the cast so no reply is lost. Celery
workers answer there; chard workers skip the copy (it is marked) and answer on chard's
``control.reply`` channel, so each node answers once. :class:`CeleryCall` is the Celery
half of one request: the client gathers from both until its timeout or limit.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from chard.brokers import Broker
from chard.protocol.control import ControlRequest
from chard.protocol.pidbox import read_reply, request_cast

logger = logging.getLogger(__name__)


class CeleryCall:
    """The Celery copy of one :class:`ControlRequest`: send it, then read its replies."""

    def __init__(self, broker: Broker, request: ControlRequest) -> None:
        self.broker = broker
        self.ticket = request.ticket

    @classmethod
    def send(cls, broker: Broker, request: ControlRequest) -> CeleryCall:
        """Cast ``request`` on Celery's pidbox (listening for replies first if it wants them).

        Raises:
            BrokerConnectionError: the broker cannot be reached.
            NotImplementedError: the broker cannot carry Celery's remote control.
        """
        now = time.time()
        reply_to = broker.celery_reply_to() if request.reply else None
        cast = request_cast(
            request.command,
            request.arguments,
            now=now,
            ttl=max(request.expires - now, 0.0),
            destination=request.destination,
            ticket=request.ticket if request.reply else None,
            reply_to=reply_to,
        )
        broker.celery_cast(cast)
        return cls(broker, request)

    def replies(self, timeout: float) -> list[dict[str, Any]]:
        """Return the ``{node: reply}`` answers to this call that came within ``timeout``;
        replies to other (earlier, late-answered) calls are dropped."""
        found = []
        for payload in self.broker.celery_replies(timeout):
            reply = read_reply(payload, self.ticket)
            if reply is None:
                logger.debug("Ignoring a reply on Celery's pidbox that is not for this call")
                continue
            found.append(reply)
        return found
