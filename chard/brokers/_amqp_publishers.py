"""Which connection a confirmed publish goes out on, so threads publish side by side.

A publish holds its client's lock until RabbitMQ confirms it, and RabbitMQ confirms a
persistent message once it has fsynced it: a millisecond or more on most disks. With one
connection per broker, threads that publish at once (a web server's request threads
calling ``delay()``) queued on that lock, one fsync each, one after the other. RabbitMQ
syncs the messages that arrive together with one fsync, so the way to more confirmed
publishes per second is more publishes in flight: a thread that finds the broker's
connection busy publishes on a spare one instead. Spares are made on demand, kept for
the next burst, and capped (:data:`SPARES`, as kombu's producer pool is by
``broker_pool_limit``); past the cap a publish waits for the broker's own connection.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from chard._amqp.client import AmqpClient

#: Spare connections per broker instance at most (kombu's default pool limit).
SPARES = 10


class Publishers:
    """The broker's client first, then spares while it is busy (see the module docstring)."""

    def __init__(self, client: AmqpClient) -> None:
        self.client = client
        self._idle: list[AmqpClient] = []
        self._made: list[AmqpClient] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def lease(self) -> Iterator[AmqpClient]:
        """A client no other thread is publishing on, for the length of the block."""
        if self.client.lock.acquire(blocking=False):  # free, or ours already
            try:
                yield self.client
            finally:
                self.client.lock.release()
            return
        spare = self._take()
        if spare is None:
            with self.client.lock:
                yield self.client
            return
        try:
            yield spare
        finally:
            with self._lock:
                self._idle.append(spare)

    def _take(self) -> AmqpClient | None:
        with self._lock:
            if self._idle:
                return self._idle.pop()
            if len(self._made) >= SPARES:
                return None
            spare = AmqpClient(self.client.target)  # connects on its first call
            self._made.append(spare)
            return spare

    def close(self) -> None:
        """Close every spare (one in use closes once its publish ends: it takes its lock)."""
        with self._lock:
            made, self._made, self._idle = self._made, [], []
        for spare in made:
            spare.close()
