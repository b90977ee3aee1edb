"""Celery's remote control on RabbitMQ: casts on the fanout exchange ``celery.pidbox``.

A Celery client's ``app.control.revoke(id)`` publishes to the fanout exchange
``celery.pidbox`` (declared by kombu non-durable); every Celery worker reads it through its
own ``<hostname>.celery.pidbox`` queue. chard does the same both ways for a mixed fleet
(``chard_celery_compat``): it publishes its revoke casts there (a Celery worker revokes),
and listens through a queue of its own, ``chard.pidbox.<consumer id>`` (expiring a minute
after its process stops reading), for what Celery clients cast (a chard worker revokes).
Only ``revoke`` crosses (see :mod:`chard.protocol.pidbox`).
"""

from __future__ import annotations

import contextlib
import time

from chard._amqp.client import AmqpClient, MissingQueue, UnroutableMessage
from chard._amqp.frames import to_envelope, to_frame
from chard.protocol.pidbox import CAST_TTL, PIDBOX_EXCHANGE

#: Unused listening queues go after this long (ms), casts in them after CAST_TTL.
_QUEUE_EXPIRES = 60_000
#: Pause between two looks at an empty listening queue (seconds).
_POLL = 0.05


class Pidbox:
    """Cast to, and listen on, Celery's ``celery.pidbox`` fanout exchange."""

    def __init__(self, client: AmqpClient, consumer_id: str) -> None:
        self.client = client
        self.queue = f"chard.pidbox.{consumer_id}"
        self._is_listening = False

    def _declare_exchange(self) -> None:
        # As kombu's Mailbox declares it: a different durability would be refused.
        self.client.declare_exchange(PIDBOX_EXCHANGE, "fanout", durable=False)

    def cast(self, envelope: bytes) -> None:
        """Publish a cast (kombu's envelope, see :func:`chard.protocol.pidbox.revoke_cast`)."""
        self._declare_exchange()
        # Unroutable: no Celery worker (nor chard listener) is bound, nobody to tell.
        with contextlib.suppress(UnroutableMessage):
            self.client.publish(PIDBOX_EXCHANGE, "", to_frame(envelope, 0))

    def listen(self) -> None:
        self._declare_exchange()
        arguments = {"x-expires": _QUEUE_EXPIRES, "x-message-ttl": int(CAST_TTL * 1000)}
        self.client.declare_queue(self.queue, arguments, durable=False)
        self.client.bind_queue(self.queue, PIDBOX_EXCHANGE, "")
        self._is_listening = True

    def casts(self, timeout: float) -> list[bytes]:
        """Return the casts heard within ``timeout`` (listening from the first call)."""
        if not self._is_listening:
            self.listen()
        heard: list[bytes] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                got = self.client.get(self.queue)
            except MissingQueue:  # expired or deleted (a long outage): listen again
                self.listen()
                continue
            if got is not None:
                self.client.settle(got)
                heard.append(to_envelope(got.frame, self.queue, got.exchange))
                continue
            if heard or time.monotonic() >= deadline:
                return heard
            time.sleep(min(_POLL, max(deadline - time.monotonic(), 0)))
