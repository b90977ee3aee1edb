"""chard's events also on Celery's ``celeryev`` topic exchange, for Celery's tools (a mixed fleet).

Celery sends each event as one message to the topic exchange ``celeryev`` (declared durable,
as kombu's default), routing key the type with dots (``task.succeeded``), JSON body the
event dict, header ``hostname``, transient. chard's events are already Celery's dicts
(:mod:`chard.protocol.events`), batched on chard's own ``events`` stream; with
``chard_celery_compat`` the AMQP broker also publishes each event of a batch there, in one
transaction per batch (one round trip, no confirm per event), so ``celery events`` and
Flower's event feed see chard's workers and tasks.

The other way, :meth:`CeleryEvents.heard` takes what Celery's workers send there through
one queue shared by all chard nodes, ``chard.celeryev`` (bound with ``#``; Celery's
``event_queue_ttl`` of 5 s and a minute's ``x-expires``), so each Celery event is taken
by one node, which appends it to chard's ``events`` stream (``worker/mixed_fleet.py``):
``chard events`` and the dashboard then show Celery's workers and tasks too. The events
chard mirrored itself carry :data:`MIRROR_HEADER` and are not taken back.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from chard._amqp.client import AmqpClient
from chard._amqp.frames import Frame
from chard.brokers._amqp_drain import drain
from chard.exceptions import BrokerError, ChardError
from chard.protocol.events import decode_batch, is_valid

logger = logging.getLogger(__name__)

#: Celery's event exchange (``event_exchange``).
EVENT_EXCHANGE = "celeryev"
#: The queue chard nodes take Celery's events from (shared: each event goes to one node).
BRIDGE_QUEUE = "chard.celeryev"
#: Header on the events chard mirrors to ``celeryev``: not taken back into chard's stream.
MIRROR_HEADER = "x-chard-mirror"
_BRIDGE_ARGUMENTS = {"x-message-ttl": 5_000, "x-expires": 60_000}


class CeleryEvents:
    """Publish event batches on ``celeryev``, one Celery event message per event."""

    def __init__(self, client: AmqpClient) -> None:
        self.client = client
        self._is_declared = False
        self._is_listening = False

    def publish(self, batch: bytes) -> None:
        """Publish every event of ``batch`` (an ``events`` channel entry); never raises for
        a bad batch or a failed publish (events are best effort; chard's stream has them)."""
        try:
            events, _ = decode_batch(batch)
            if not events:
                return
            if not self._is_declared:
                self.client.declare_exchange(EVENT_EXCHANGE, "topic")
                self._is_declared = True
            items = [
                (EVENT_EXCHANGE, str(event["type"]).replace("-", "."), _frame(event))
                for event in events
            ]
            self.client.publish_batch(items)
        except (ChardError, BrokerError) as exc:
            logger.debug("Events not mirrored on %s: %s", EVENT_EXCHANGE, exc, exc_info=True)

    def heard(self, timeout: float) -> list[dict[str, Any]]:
        """Return the events Celery's workers sent that this node took within ``timeout``."""
        if not self._is_listening:
            self._listen()
        events: list[dict[str, Any]] = []
        for got in drain(self.client, BRIDGE_QUEUE, timeout, self._listen):
            if got.frame.headers.get(MIRROR_HEADER):
                continue
            try:
                body = json.loads(got.frame.body)
            except ValueError:
                continue
            # task.multi: Celery's batch of buffered events
            events.extend(e for e in (body if isinstance(body, list) else [body]) if is_valid(e))
        return events

    def _listen(self) -> None:
        self.client.declare_exchange(EVENT_EXCHANGE, "topic")
        self.client.declare_queue(BRIDGE_QUEUE, _BRIDGE_ARGUMENTS, durable=False)
        self.client.bind_queue(BRIDGE_QUEUE, EVENT_EXCHANGE, "#")
        self._is_declared = self._is_listening = True


def _frame(event: dict[str, object]) -> Frame:
    body = json.dumps(event, separators=(",", ":"), default=repr).encode()
    return Frame(
        body,
        {"hostname": str(event.get("hostname", "")), MIRROR_HEADER: True},
        content_type="application/json",
        content_encoding="utf-8",
    )
