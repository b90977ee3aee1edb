"""chard's events also on Celery's ``celeryev`` topic exchange, for Celery's tools (a mixed fleet).

Celery sends each event as one message to the topic exchange ``celeryev`` (declared durable,
as kombu's default), routing key the type with dots (``task.succeeded``), JSON body the
event dict, header ``hostname``, transient. chard's events are already Celery's dicts
(:mod:`chard.protocol.events`), batched on chard's own ``events`` stream; with
``chard_celery_compat`` the AMQP broker also publishes each event of a batch there, in one
transaction per batch (one round trip, no confirm per event), so ``celery events`` and
Flower's event feed see chard's workers and tasks. Nothing reads ``celeryev`` back: chard's
tools see Celery's workers only through chard's own channels, which Celery does not write.
"""

from __future__ import annotations

import json
import logging

from chard._amqp.client import AmqpClient
from chard._amqp.frames import Frame
from chard.exceptions import BrokerError, ChardError
from chard.protocol.events import decode_batch

logger = logging.getLogger(__name__)

#: Celery's event exchange (``event_exchange``).
EVENT_EXCHANGE = "celeryev"


class CeleryEvents:
    """Publish event batches on ``celeryev``, one Celery event message per event."""

    def __init__(self, client: AmqpClient) -> None:
        self.client = client
        self._is_declared = False

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


def _frame(event: dict[str, object]) -> Frame:
    body = json.dumps(event, separators=(",", ":"), default=repr).encode()
    return Frame(
        body,
        {"hostname": str(event.get("hostname", ""))},
        content_type="application/json",
        content_encoding="utf-8",
    )
