"""Publisher confirms on the work channel, counted by chard rather than by pika.

pika's blocking channel in confirm mode waits for each publish's confirm before it
returns, and takes any confirm that arrives as the one it waits for: a publish that is
not waited for would have its late confirm read as the next publish's. A worker's rpc://
reply needs no confirm of its own: it is published on the channel that then acks the
task's message, and RabbitMQ handles one channel's methods in order, so a reply is
routed to its queue before that ack is (if the connection dies between them, the
message was not acked and comes back). :class:`Confirms` numbers every publish of the
channel as RabbitMQ does (1, 2, ... from ``confirm.select``), so a publish can wait for
its own confirm while others are left outstanding.

A waited publish holds the client's lock until its confirm comes, so at most one is
waited for at a time; it is ``mandatory``, and a ``basic.return`` before its confirm
says it was unroutable. Publishes not waited for are not mandatory (nothing would read
their return).
"""

from __future__ import annotations

from typing import Any

import pika
from pika.adapters.blocking_connection import BlockingChannel

from chard.exceptions import BrokerError


class Unroutable(BrokerError):
    """A waited publish came back: no queue is bound for it."""


class Refused(BrokerError):
    """RabbitMQ refused a waited publish (``basic.nack``)."""


class Confirms:
    """The work channel's publisher confirms (see the module docstring)."""

    def __init__(self, channel: BlockingChannel) -> None:
        self._channel = channel
        #: The delivery tag RabbitMQ gives the channel's latest publish.
        self.published = 0
        #: The highest delivery tag RabbitMQ has confirmed (acked) so far.
        self.confirmed = 0
        self._waited = 0  # the tag of the publish waited for (0: none)
        self._acked: bool | None = None
        self._returned = False
        selected: list[bool] = []
        impl = channel._impl
        impl.confirm_delivery(ack_nack_callback=self._on_confirm, callback=selected.append)
        impl.add_on_return_callback(self._on_return)
        channel._flush_output(lambda: bool(selected))

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: pika.BasicProperties,
        *,
        wait: bool = True,
    ) -> None:
        """Publish; with ``wait``, return once RabbitMQ confirmed it.

        Raises:
            Unroutable: (waited) no queue is bound for it.
            Refused: (waited) RabbitMQ refused it (a ``basic.nack``).
        """
        impl = self._channel._impl
        # Counted once pika took it: a publish it refuses (a header no AMQP field table
        # holds: struct.error before anything is written) gets no tag from RabbitMQ, and
        # counting it would have the next waited publish wait for a confirm never sent.
        if not wait:
            impl.basic_publish(exchange, routing_key, body, properties)
            self.published += 1
            self._channel._flush_output()  # written by now, unless the socket was full
            return
        self._waited, self._acked, self._returned = self.published + 1, None, False
        try:
            impl.basic_publish(exchange, routing_key, body, properties, mandatory=True)
            self.published += 1
            self._channel._flush_output(lambda: self._outcome() is not None)
            if not self._outcome():
                raise Refused("basic.nack")
            if self._returned_before_confirm():
                raise Unroutable("RabbitMQ returned the message: no queue is bound for it")
        finally:
            self._waited = 0

    def _outcome(self) -> bool | None:
        """The waited publish's confirm: True (ack), False (nack), None (not yet)."""
        return self._acked

    def _returned_before_confirm(self) -> bool:
        return self._returned

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        tag = int(method.delivery_tag)
        if isinstance(method, pika.spec.Basic.Ack):
            self.confirmed = max(self.confirmed, tag)
        if self._waited and (tag == self._waited or (method.multiple and tag >= self._waited)):
            self._acked = isinstance(method, pika.spec.Basic.Ack)

    def _on_return(self, _channel: Any, _method: Any, _props: Any, _body: bytes) -> None:
        if self._waited:
            self._returned = True
