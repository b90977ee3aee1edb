"""Dead letters on RabbitMQ: one durable queue, ``chard.dead-letters``, read by browsing.

A dead letter is the message itself with headers saying where it came from, why and when
it was set aside, and how often it had been delivered. AMQP cannot read a queue without
taking from it, so listing takes the letters (unacked) in order and puts them all back
(a requeue returns them to their places); re-driving one takes letters up to it and acks
only that one. Both are rare operator actions (``chard dead-letters``).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace

from chard._amqp.client import AmqpClient, Got
from chard._amqp.frames import Frame, to_envelope
from chard.brokers.base import DeadLetter

DEAD_LETTER_QUEUE = "chard.dead-letters"
_PREFIX = "x-chard-dl-"


def letter_frame(frame: Frame, queue: str, reason: str, delivery_count: int) -> Frame:
    """``frame`` as a dead letter from ``queue`` (its bookkeeping headers already dropped)."""
    headers = {
        **frame.headers,
        f"{_PREFIX}id": uuid.uuid4().hex,
        f"{_PREFIX}queue": queue,
        f"{_PREFIX}reason": reason,
        f"{_PREFIX}failed-at": repr(time.time()),  # pika encodes no AMQP double
        f"{_PREFIX}count": delivery_count,
    }
    return replace(frame, headers=headers)


def original_frame(frame: Frame) -> Frame:
    """The message as it was before it was set aside."""
    return replace(
        frame, headers={k: v for k, v in frame.headers.items() if not k.startswith(_PREFIX)}
    )


def to_dead_letter(got: Got) -> DeadLetter:
    h = got.frame.headers
    queue = str(h.get(f"{_PREFIX}queue", ""))
    return DeadLetter(
        id=str(h.get(f"{_PREFIX}id", "")),
        queue=queue,
        body=to_envelope(original_frame(got.frame), queue),
        reason=str(h.get(f"{_PREFIX}reason", "")),
        failed_at=float(h.get(f"{_PREFIX}failed-at", 0.0)),
        delivery_count=int(h.get(f"{_PREFIX}count", 1)),
    )


def browse(
    client: AmqpClient, limit: int, wanted: str | None = None
) -> tuple[list[Got], Got | None]:
    """Take up to ``limit`` dead letters in order, then requeue them all in place.

    With ``wanted``, stop at the letter of that id and return it unacked, for the caller
    to settle; the others go back.
    """
    taken: list[Got] = []
    match: Got | None = None
    with client.lock:
        if client.queue_size(DEAD_LETTER_QUEUE) is None:
            return [], None
        try:
            while len(taken) < limit:
                got = client.get(DEAD_LETTER_QUEUE)
                if got is None:
                    break
                if wanted is not None and got.frame.headers.get(f"{_PREFIX}id") == wanted:
                    match = got
                    break
                taken.append(got)
        finally:
            for got in reversed(taken):
                client.settle(got, requeue=True)
    return taken, match
