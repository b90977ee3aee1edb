"""Broker-side countdown/eta without a plugin: a binary chain of TTL queues, per target queue.

A delay of ``d`` whole seconds (rounded up, so never early) is written in binary, one
routing-key word per bit, most significant first: ``"0.0.…1.0.1.<queue>"`` (28 bits, up
to 8.5 years). The message enters exchange ``chard.delay.27``. At each level ``L`` a set
bit routes it into queue ``chard.delay.L.<queue>``, whose queue-wide TTL is ``2**L``
seconds and whose dead-letter exchange is level ``L-1``; a clear bit routes it straight on
to level ``L-1`` (an exchange-to-exchange binding). After level 0 the exchange
``chard.delay.deliver`` hands it to ``<queue>`` by the trailing words. This is the layout
of Celery 5.5's native delayed delivery, except that the TTL queues are per target queue:
every message in one TTL queue waits equally long, so RabbitMQ expires them in order, and
the queue's length and purge can count the messages that are still waiting.

Nothing lives in worker memory, so a worker restart loses none.
"""

from __future__ import annotations

import math

#: Bits of delay (seconds): 2**28 s is about 8.5 years.
LEVELS = 28
MAX_DELAY = 2**LEVELS - 1
#: Where a delayed message is published; the chain continues from there.
ENTRY_EXCHANGE = f"chard.delay.{LEVELS - 1}"
DELIVER_EXCHANGE = "chard.delay.deliver"


def delay_seconds(eta: float, now: float) -> int:
    """Whole seconds to wait for ``eta``, rounded up (0 when due)."""
    return max(math.ceil(eta - now - 1e-3), 0) if eta > now else 0


def routing_key(delay: int, queue: str) -> str:
    """The routing key that carries ``delay`` seconds to ``queue`` through the chain."""
    return ".".join(format(delay, f"0{LEVELS}b")) + "." + queue


def set_levels(delay: int) -> list[int]:
    """The levels whose TTL queue a message of ``delay`` seconds waits in."""
    return [level for level in range(LEVELS) if delay >> level & 1]


def level_exchange(level: int) -> str:
    return DELIVER_EXCHANGE if level < 0 else f"chard.delay.{level}"


def level_queue(level: int, queue: str) -> str:
    return f"chard.delay.{level}.{queue}"


def _bit_pattern(level: int, bit: str, tail: str) -> str:
    return ".".join(["*"] * (LEVELS - 1 - level) + [bit] + ["*"] * level) + "." + tail


def wait_pattern(level: int, queue: str) -> str:
    """Binding of ``level_queue(level, queue)`` to its level's exchange: the bit is 1."""
    return _bit_pattern(level, "1", queue)


def skip_pattern(level: int) -> str:
    """Binding of level ``level - 1`` to level ``level``: the bit is 0, go on."""
    return _bit_pattern(level, "0", "#")


def deliver_pattern(queue: str) -> str:
    """Binding of ``queue`` to the deliver exchange: any bits, then its name."""
    return ".".join(["*"] * LEVELS) + "." + queue


def level_arguments(level: int) -> dict[str, object]:
    """Arguments of a level's TTL queue: wait ``2**level`` s, then on to the next level."""
    return {
        "x-message-ttl": (2**level) * 1000,
        "x-dead-letter-exchange": level_exchange(level - 1),
    }
