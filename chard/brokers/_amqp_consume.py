"""The queues one RabbitMQ broker instance consumes, and what was pushed but not handed out.

Why a consumer and not ``basic.get``: a ``basic.get`` is a round trip per message; a
consumer with a QoS window has RabbitMQ push the next messages while the worker runs
the current ones. The price is a buffer of pushed messages per queue that belong to
this channel until handed out or given back. :class:`Subscriptions` owns that buffer
and the consumer tags, survives reconnects (a new connection generation starts
empty: RabbitMQ requeued what the old one held), and gives back what a consumer no
longer asks for. Every method expects the client's lock held.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Sequence

from chard._amqp.client import AmqpClient, Got, MissingQueue
from chard.exceptions import BrokerError


class Subscriptions:
    """Consumer tags by queue, the QoS window, and each queue's pushed messages.

    Args:
        client: the broker's client (its lock held by every caller).
        redeclare: declare a queue again (it was deleted behind our back).
        put_back: return a pushed message that was not handed out to its queue.
    """

    def __init__(
        self,
        client: AmqpClient,
        redeclare: Callable[[str], None],
        put_back: Callable[[Got, str], None],
    ) -> None:
        self.client = client
        self._redeclare = redeclare
        self._put_back = put_back
        #: Consumer tag by queue, on connection generation ``_generation``.
        self._consumers: dict[str, str] = {}
        self._generation = 0
        #: Messages RabbitMQ pushed and fetch has not handed out, by queue.
        self.buffers: dict[str, deque[Got]] = {}
        #: The consumers' QoS prefetch window (set on the first subscribe).
        self.window = 0

    def __bool__(self) -> bool:
        return bool(self._consumers)

    def subscribe(self, queues: Sequence[str], limit: int) -> None:
        """Consume each of ``queues`` (again after a reconnect or a deleted queue).

        The QoS window is twice the first fetch's ``limit`` (the worker's window), so the
        next messages are already here when acks are on their way, and RabbitMQ holds
        back the rest for other workers.
        """
        if self._generation != self.client.generation:
            self._consumers.clear()
            self.buffers.clear()
            self._generation = self.client.generation
        self.window = self.window or max(2 * limit, 4)
        dropped = [q for q in self._consumers if q not in queues]
        if dropped:  # no longer consumed here (cancel_consumer): let others have them
            self.unsubscribe(dropped)
        for queue in queues:
            tag = self._consumers.get(queue)
            if tag is not None and self.client.consuming(tag):
                continue
            on_got = self.buffers.setdefault(queue, deque()).append
            try:
                tag = self.client.subscribe(queue, self.window, on_got)
            except MissingQueue:  # deleted behind our back: declare it again, once
                self._redeclare(queue)
                tag = self.client.subscribe(queue, self.window, on_got)
            if self._generation != self.client.generation:  # reconnected meanwhile
                self._consumers.clear()
                self._generation = self.client.generation
            self._consumers[queue] = tag

    def unsubscribe(self, queues: Sequence[str] | None = None) -> None:
        """Stop consuming (``queues``, or all), and put back what fetch did not hand out.

        Done when nobody fetched for a lease (a busy or wedged holder) and for queues a
        fetch no longer names: messages never hide in a buffer of a consumer that is not
        asking for them.
        """
        for queue in list(self._consumers) if queues is None else queues:
            with contextlib.suppress(BrokerError):
                self.client.unsubscribe(self._consumers.pop(queue))
        for queue, buffer in self.buffers.items():
            if queues is not None and queue not in queues:
                continue
            while buffer:
                got = buffer.popleft()
                if got.generation == self.client.generation:
                    with contextlib.suppress(BrokerError):
                        self._put_back(got, queue)

    def pushed(self, queue: str, *, take: bool) -> list[Got]:
        """The messages of ``queue`` pushed here and not handed out (``take``: and drop them)."""
        buffer = self.buffers.get(queue, deque())
        pushed = [got for got in buffer if got.generation == self.client.generation]
        if take:
            buffer.clear()  # in place: the consumer's callback appends to this one
        return pushed
