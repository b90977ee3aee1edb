"""Parking: how a task held longer than RabbitMQ's ``consumer_timeout`` keeps its message.

RabbitMQ closes a channel that holds an unacked delivery longer than ``consumer_timeout``
(30 minutes by default, checked about once a minute) and requeues what it held, so a long
task would run a second time elsewhere while it still runs. Before that can happen (at
half the timeout) the broker *parks* the delivery: it publishes a copy to this consumer's
own queue ``chard.parked.<consumer_id>`` and acks the original, so the channel holds
nothing old. The parking queue is the lease:

* its messages expire after :attr:`Parking.ttl` seconds and are dead-lettered through the
  headers exchange ``chard.unpark`` back to their queue (the ``x-chard-origin`` header
  picks it), counted as a lost delivery: a dead consumer's parked messages come back;
* a live consumer renews them (a fresh copy, the old one acked) every third of that;
* settling a parked delivery takes its copy out of the parking queue.

Only this instance reads its parking queue, so taking one copy out means reading them all
and putting back the others.
"""

from __future__ import annotations

import uuid
from dataclasses import replace

from chard._amqp.client import AmqpClient, Got
from chard._amqp.frames import COUNT_HEADER, ORIGIN_HEADER, PARK_HEADER

UNPARK_EXCHANGE = "chard.unpark"


class Parking:
    """One broker instance's parking queue (see the module docstring); callers hold the lock."""

    def __init__(self, client: AmqpClient, consumer_id: str, ttl: float) -> None:
        self.client = client
        self.queue = f"chard.parked.{consumer_id}"
        self.ttl = ttl
        self._ready: set[str] = set()

    def _declare(self, origin: str) -> None:
        if not self._ready:
            self.client.declare_exchange(UNPARK_EXCHANGE, "headers")
            ttl_ms = int(self.ttl * 1000)
            self.client.declare_queue(
                self.queue,
                {
                    "x-message-ttl": ttl_ms,
                    "x-dead-letter-exchange": UNPARK_EXCHANGE,
                    # Deleted once unused for long after its last message came home.
                    "x-expires": ttl_ms * 4,
                },
            )
            self._ready.add(self.queue)
        if origin not in self._ready:
            self.client.bind_queue(
                origin, UNPARK_EXCHANGE, "", {"x-match": "all", ORIGIN_HEADER: origin}
            )
            self._ready.add(origin)

    def park(self, got: Got, origin: str, delivery_count: int) -> str:
        """Copy ``got`` into the parking queue, then ack it; return the copy's park id."""
        self._declare(origin)
        park_id = uuid.uuid4().hex
        headers = {
            **got.frame.headers,
            COUNT_HEADER: delivery_count,  # if it comes home, this delivery was lost
            ORIGIN_HEADER: origin,
            PARK_HEADER: park_id,
        }
        self.client.publish("", self.queue, replace(got.frame, headers=headers))
        self.client.settle(got)
        return park_id

    def take(self, park_id: str) -> Got | None:
        """Return the parked copy ``park_id`` unacked (the others go back), or None if gone."""
        found: Got | None = None
        others: list[Got] = []
        while (got := self.client.get(self.queue)) is not None:
            if got.frame.headers.get(PARK_HEADER) == park_id:
                found = got
                break
            others.append(got)
        for other in reversed(others):
            self.client.settle(other, requeue=True)
        return found

    def renew(self, live: set[str]) -> None:
        """Give every parked copy in ``live`` a fresh TTL; drop copies of settled deliveries."""
        taken: list[Got] = []
        while (got := self.client.get(self.queue)) is not None:
            taken.append(got)
        for got in taken:
            if got.frame.headers.get(PARK_HEADER) in live:
                self.client.publish("", self.queue, got.frame)
            self.client.settle(got)
