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
import threading
import time
from collections import OrderedDict
from typing import Any

from chard.brokers import Broker
from chard.protocol.control import ControlRequest
from chard.protocol.pidbox import read_reply, request_cast

logger = logging.getLogger(__name__)

#: Most calls whose replies are kept for them (a call that gave up never claims its own).
UNCLAIMED_LIMIT = 1000


class Unclaimed:
    """Replies taken by one call for another (kombu's ``unclaimed``): the calls of one
    app's threads share the process's reply queue, so each keeps what it takes for the
    others. One per :class:`~chard.control.Control`."""

    def __init__(self) -> None:
        self._by_ticket: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()

    def sort(self, ticket: str, payloads: list[bytes]) -> list[dict[str, Any]]:
        """Return ``ticket``'s replies, kept ones first; keep the others' for them."""
        with self._lock:
            found = self._by_ticket.pop(ticket, [])
            for payload in payloads:
                owner, reply = read_reply(payload)
                if reply is None:
                    logger.debug("Ignoring a message on Celery's reply queue: not a reply")
                elif owner == ticket:
                    found.append(reply)
                else:
                    self._by_ticket.setdefault(owner, []).append(reply)
                    while len(self._by_ticket) > UNCLAIMED_LIMIT:
                        self._by_ticket.popitem(last=False)
            return found


class CeleryCall:
    """The Celery copy of one :class:`ControlRequest`: send it, then read its replies."""

    def __init__(self, broker: Broker, request: ControlRequest, unclaimed: Unclaimed) -> None:
        self.broker = broker
        self.ticket = request.ticket
        self.unclaimed = unclaimed

    @classmethod
    def send(cls, broker: Broker, request: ControlRequest, unclaimed: Unclaimed) -> CeleryCall:
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
        return cls(broker, request, unclaimed)

    def replies(self, timeout: float) -> list[dict[str, Any]]:
        """Return the ``{node: reply}`` answers to this call that came within ``timeout``
        (or were taken meanwhile by another call of this process)."""
        return self.unclaimed.sort(self.ticket, self.broker.celery_replies(timeout))
