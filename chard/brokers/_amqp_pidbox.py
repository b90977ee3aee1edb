"""Celery's remote control on RabbitMQ: ``celery.pidbox`` casts, ``reply.celery.pidbox`` replies.

A Celery client's ``app.control`` publishes to the fanout exchange ``celery.pidbox``
(declared by kombu non-durable); every Celery worker reads it through its own
``<hostname>.celery.pidbox`` queue, and answers a call on the direct exchange
``reply.celery.pidbox`` with the client's routing key, bound to the client's
``<oid>.reply.celery.pidbox`` queue. chard does the same both ways for a mixed fleet
(``chard_celery_compat``): a chard client casts there and reads its replies from a queue of
its own, ``chard.<uuid>.reply.celery.pidbox`` (expiring 10 s after its last read, as
kombu's), and a chard worker listens through ``chard.pidbox.<consumer id>`` (expiring a
minute after its process stops reading) and answers on the reply exchange (see
:mod:`chard.protocol.pidbox` for the messages).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Mapping

from chard._amqp.client import AmqpClient, UnroutableMessage
from chard._amqp.frames import to_envelope, to_frame
from chard.brokers._amqp_drain import drain
from chard.protocol.pidbox import CAST_TTL, PIDBOX_EXCHANGE, REPLY_EXCHANGE

#: Unused listening queues go after this long (ms), casts in them after CAST_TTL.
_QUEUE_EXPIRES = 60_000
#: A client's unused reply queue goes after this long (ms): kombu's ``control_queue_expires``.
_REPLY_QUEUE_EXPIRES = 10_000


class Pidbox:
    """Cast to, and listen on, Celery's ``celery.pidbox`` fanout exchange."""

    def __init__(self, client: AmqpClient, consumer_id: str) -> None:
        self.client = client
        self.queue = f"chard.pidbox.{consumer_id}"
        self._is_listening = False
        #: This process's routing key on the reply exchange (kombu's ``oid``).
        self.oid = f"chard.{uuid.uuid4().hex}"
        self.reply_queue = f"{self.oid}.{REPLY_EXCHANGE}"
        self._is_awaiting = False

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
        return self._envelopes(self.queue, self.listen, timeout)

    def reply(self, reply_to: Mapping[str, str], envelope: bytes) -> None:
        """Publish a worker's reply where the call asked (kombu declares the exchange so)."""
        exchange = reply_to.get("exchange") or REPLY_EXCHANGE
        self.client.declare_exchange(exchange, "direct", durable=False)
        # Unroutable: the client gave up and its queue expired; nobody to tell.
        with contextlib.suppress(UnroutableMessage):
            frame = to_frame(envelope, 0)
            self.client.publish(exchange, reply_to.get("routing_key", ""), frame, persistent=False)

    def await_replies(self) -> dict[str, str]:
        """Declare this process's reply queue (once); return the ``reply_to`` calls carry."""
        if not self._is_awaiting:
            self._declare_reply_queue()
        return {"exchange": REPLY_EXCHANGE, "routing_key": self.oid}

    def replies(self, timeout: float) -> list[bytes]:
        """Return the replies that came within ``timeout`` (see :meth:`await_replies`)."""
        self.await_replies()
        return self._envelopes(self.reply_queue, self._declare_reply_queue, timeout)

    def _declare_reply_queue(self) -> None:
        self.client.declare_exchange(REPLY_EXCHANGE, "direct", durable=False)
        arguments = {"x-expires": _REPLY_QUEUE_EXPIRES}
        self.client.declare_queue(self.reply_queue, arguments, durable=False)
        self.client.bind_queue(self.reply_queue, REPLY_EXCHANGE, self.oid)
        self._is_awaiting = True

    def _envelopes(self, queue: str, redeclare: Callable[[], None], timeout: float) -> list[bytes]:
        taken = drain(self.client, queue, timeout, redeclare)
        return [to_envelope(got.frame, queue, got.exchange) for got in taken]
