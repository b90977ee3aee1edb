"""Take what a small RabbitMQ queue holds: the helper of the mixed-fleet listeners.

Celery's control messages and events reach chard through queues of chard's own (bound to
``celery.pidbox``, ``reply.celery.pidbox``, ``celeryev``) that see a few messages a second
at most, so they are read by ``basic.get`` rather than a consumer: nothing is pushed to a
process that stopped reading, and an idle queue costs one look per :data:`POLL`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from chard._amqp.client import AmqpClient, Got, MissingQueue

#: Pause between two looks at an empty queue (seconds).
POLL = 0.05


def drain(
    client: AmqpClient, queue: str, timeout: float, redeclare: Callable[[], None]
) -> list[Got]:
    """Take (acked) every message of ``queue``, waiting up to ``timeout`` for the first.

    ``redeclare`` is called when the queue is gone (it expired during a long outage).
    """
    taken: list[Got] = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = client.get(queue)
        except MissingQueue:
            redeclare()
            continue
        if got is not None:
            client.settle(got)
            taken.append(got)
            continue
        if taken or time.monotonic() >= deadline:
            return taken
        time.sleep(min(POLL, max(deadline - time.monotonic(), 0)))
