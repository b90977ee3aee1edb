"""Dead letters as people read them, and re-driving them: shared by the CLI and the dashboard.

A dead letter's body is the message as it was set aside; what a reader wants (task,
task id, deliveries including the worker's own death count) is in its headers, read
here without trusting the body to decode. Re-driving resets that death count, so a
re-driven poison pill gets its full set of deliveries again.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from chard.brokers.base import Broker, DeadLetter, DelayedMessage
from chard.protocol import serializers
from chard.protocol.message import LOST_HEADER, with_header

#: Dead letters read at most when re-driving by id.
MAX_LETTERS = 100_000


def message_headers(body: bytes) -> dict[str, Any]:
    """Return the headers of a message body, or ``{}`` when it cannot be decoded."""
    try:
        envelope = serializers.json_loads(body)
    except Exception:  # an undecodable message is a reason to be dead; show what we can
        return {}
    headers = envelope.get("headers") if isinstance(envelope, dict) else None
    return headers if isinstance(headers, dict) else {}


def describe(letter: DeadLetter, now: float | None = None) -> dict[str, Any]:
    """Return ``letter`` as a JSON-able row: id, queue, task, task_id, age, deliveries..."""
    headers = message_headers(letter.body)
    deaths = headers.get(LOST_HEADER)
    now = time.time() if now is None else now
    return {
        "id": letter.id,
        "queue": letter.queue,
        "task": headers.get("task") or "?",
        "task_id": headers.get("id") or "?",
        "age": age(now - letter.failed_at),
        "deliveries": letter.delivery_count + (deaths if isinstance(deaths, int) else 0),
        "reason": letter.reason,
        "failed_at": letter.failed_at,
    }


def describe_delayed(held: DelayedMessage) -> dict[str, Any]:
    """Return a countdown/ETA message as a JSON-able row: queue, task, task_id, eta, priority."""
    headers = message_headers(held.body)
    return {
        "queue": held.queue,
        "task": headers.get("task") or "?",
        "task_id": headers.get("id") or "?",
        "eta": held.eta,
        "priority": held.priority,
    }


def age(seconds: float) -> str:
    """Return ``seconds`` as a short age: ``42s``, ``5m``, ``3h``, ``2d``."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def reset_deaths(body: bytes) -> bytes | None:
    """Return ``body`` with the worker's death count at zero, or None to keep it as is."""
    if not message_headers(body).get(LOST_HEADER):
        return None
    return with_header(body, LOST_HEADER, 0)


def redrive(broker: Broker, ids: Sequence[str] | None) -> tuple[list[DeadLetter], list[str]]:
    """Put dead letters ``ids`` (None: all) back on their queues, death counts reset.

    Returns:
        The letters moved, and the ids that named no dead letter.

    Raises:
        BrokerConnectionError: the broker cannot be reached.
    """
    letters = {letter.id: letter for letter in broker.dead_letters(MAX_LETTERS)}
    moved: list[DeadLetter] = []
    unknown: list[str] = []
    for dead_id in list(letters) if ids is None else ids:
        letter = letters.get(dead_id)
        body = reset_deaths(letter.body) if letter is not None else None
        if not broker.redrive(dead_id, body):
            unknown.append(dead_id)
        elif letter is not None:
            moved.append(letter)
    return moved, unknown
