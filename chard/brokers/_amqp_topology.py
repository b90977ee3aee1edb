"""Declaring a queue's topology on RabbitMQ (``task_queues``), and listing its delayed messages.

:func:`declare` does what kombu's ``Queue.declare`` does, with the same arguments, so a
Celery process declaring the same queue agrees with chard: each binding's exchange (type,
durability, arguments), then the queue, then the bindings. :func:`browse_delayed` reads the
countdown/ETA messages waiting in a queue's delay chain for ``inspect scheduled``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from chard._amqp import delay as chain
from chard._amqp.client import AmqpClient, browse
from chard._amqp.frames import ETA_HEADER, to_envelope
from chard.brokers.base import DelayedMessage
from chard.exceptions import ChardError
from chard.protocol import fields
from chard.protocol.topology import QueueSpec, Topology

#: The queue argument RabbitMQ's quorum queues read: redeliveries allowed before a drop.
DELIVERY_LIMIT = "x-delivery-limit"


def declare(client: AmqpClient, spec: QueueSpec) -> int | None:
    """Declare ``spec``'s exchanges, queue and bindings (again after a deletion: idempotent).

    Returns how many deliveries a message of the queue may have, from its
    ``x-delivery-limit`` (RabbitMQ drops a message redelivered more than that many times,
    so it may run ``limit + 1`` times), or None when the queue sets none.
    """
    for binding in spec.bindings:
        exchange = binding.exchange
        client.declare_exchange(
            exchange.name,
            exchange.type,
            durable=exchange.durable,
            auto_delete=exchange.auto_delete,
            arguments=dict(exchange.arguments),
        )
    arguments = spec.argument_dict
    client.declare_queue(
        spec.name,
        arguments,
        durable=spec.durable,
        exclusive=spec.exclusive,
        auto_delete=spec.auto_delete,
    )
    for binding in spec.bindings:
        client.bind_queue(
            spec.name, binding.exchange.name, binding.routing_key, dict(binding.arguments)
        )
    limit = arguments.get(DELIVERY_LIMIT)
    return int(limit) + 1 if isinstance(limit, int) and limit >= 0 else None


def destination(
    table: Topology, queue: str, exchange: str | None, routing_key: str | None
) -> tuple[str, str]:
    """Where a message for ``queue`` is published: :meth:`Topology.destination`, except that
    a queue reached by name through the default exchange is reached through its own direct
    exchange when it has one bound by its name (the same queue gets it). A queue deleted
    behind chard's back then fails the publish (no such exchange) and is declared again,
    where the default exchange would drop a message of a batch without a word.
    """
    found = table.destination(queue, exchange, routing_key)
    if found == ("", queue):
        for binding in table.queue(queue).bindings:
            if binding.exchange.type == "direct" and binding.routing_key == queue:
                return binding.exchange.name, queue
    return found


def browse_delayed(client: AmqpClient, queues: Sequence[str], limit: int) -> list[DelayedMessage]:
    """Return up to ``limit`` messages waiting in the delay chains of ``queues``, soonest first.

    Read only: each level's messages are taken unacked on a channel of their own and given
    back (in order) when it closes. Its due time is the one chard noted when it entered the
    chain (or the task's ``eta`` header).
    """
    found: list[DelayedMessage] = []
    for queue in queues:
        for level in range(chain.LEVELS):
            name = chain.level_queue(level, queue)
            if not client.queue_size(name):
                continue
            for frame in browse(client, name, limit):
                envelope = to_envelope(frame, queue)
                found.append(DelayedMessage(queue, envelope, _eta(frame.headers), frame.priority))
    found.sort(key=lambda m: m.eta)
    return found[:limit]


def _eta(headers: dict[str, Any]) -> float:
    """When a delayed message falls due: chard's header, else the task's ``eta`` (Celery's)."""
    own = headers.get(ETA_HEADER)
    if isinstance(own, int):
        return own / 1000
    try:
        when = fields.instant(headers.get("eta"), "header 'eta'")
    except ChardError:
        when = None
    return when.timestamp() if when is not None else 0.0
