"""``--autoscale=max,min``: grow the prefork pool while tasks wait, shrink it when idle.

How the parent knows that tasks wait. Each prefork child consumes for itself (see
:mod:`chard.worker.supervisor`), so no message passes through the parent; it has two
cheap views of demand, and uses both:

* which children are busy, from their shared-memory slots (no system call), and
* how many messages are ready in the queues this node consumes
  (:meth:`Broker.queue_size`: one ``LLEN``/``COUNT`` per queue and tick).

Busy children alone cannot tell "exactly enough processes" from "a backlog is
building", and queue sizes alone miss the work being done; their sum is the number
of processes that could be used right now. Messages a busy child has already leased
ahead are in neither view, so for long tasks under autoscale ``--prefetch-multiplier
1`` keeps the backlog in the broker, where new children can take it.

The decision (:meth:`Autoscaler.decide`) is pure and takes the time as an argument.
Like Celery's autoscaler it grows at once, up to ``max``, and shrinks only after
``keepalive`` seconds (Celery's ``AUTOSCALE_KEEPALIVE`` environment variable, 30 by
default) without a need for the processes it would retire: the cool-down that stops
a bursty queue from forking and retiring children on every tick.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Protocol

logger = logging.getLogger("chard.worker")

#: Seconds a grown pool waits without demand before shrinking (Celery's variable name).
DEFAULT_KEEPALIVE = float(os.environ.get("AUTOSCALE_KEEPALIVE", "30"))
#: Seconds between two looks at demand.
TICK_INTERVAL = 0.5


class Resizable(Protocol):
    """What the autoscaler drives: the prefork supervisor."""

    @property
    def size(self) -> int: ...
    def busy(self) -> int: ...
    def resize(self, concurrency: int) -> None: ...


def parse_autoscale(value: str | tuple[int, int] | list[int]) -> tuple[int, int]:
    """Return ``(max, min)`` from ``"max,min"`` (the option) or a pair (the setting).

    ``min`` may be 0, as in Celery; a prefork node still keeps one child, which fetches
    new work without waiting for a tick (a node of none would stop).

    Raises:
        ValueError: not two integers, ``max`` below 1, ``min`` below 0, or ``min`` over ``max``.
    """
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
    else:
        parts = [str(p) for p in value]
    hint = "give max,min processes, e.g. --autoscale=10,3"
    if len(parts) != 2 or not all(p.lstrip("-").isdigit() for p in parts):
        raise ValueError(f"malformed autoscale value {value!r}; {hint}")
    high, low = int(parts[0]), int(parts[1])
    if high < 1 or low < 0 or low > high:
        raise ValueError(f"autoscale value {value!r} needs max >= min >= 0 and max >= 1; {hint}")
    return high, low


class Autoscaler:
    """Decide a pool size from demand, and apply it from a thread of the parent.

    ``update(max, min)``, ``force_scale_up(n)`` and ``force_scale_down(n)`` are what the
    ``autoscale``, ``pool_grow`` and ``pool_shrink`` control commands call (as in Celery);
    each is thread-safe and takes effect on the next tick.
    """

    def __init__(
        self,
        pool: Resizable,
        waiting: Callable[[], int],
        max_concurrency: int,
        min_concurrency: int,
        *,
        keepalive: float = DEFAULT_KEEPALIVE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pool = pool
        self.waiting = waiting
        self.max_concurrency = max_concurrency
        self.min_concurrency = min_concurrency
        self.keepalive = keepalive
        self._clock = clock
        self._lock = threading.Lock()
        #: When demand last needed the current size (a grow counts): the cool-down's start.
        self._last_needed = clock()
        self._thread: threading.Thread | None = None

    # -- the decision (pure but for the clock) ------------------------------------------------
    def decide(self, current: int, busy: int, waiting: int) -> int:
        """Return the pool size to run now, given the size, busy children and ready messages."""
        now = self._clock()
        with self._lock:
            high, low = self.max_concurrency, self.min_concurrency
            floor = max(low, 1)  # min 0 keeps one child all the same (see parse_autoscale)
            needed = min(high, max(floor, busy + waiting))
            if needed >= current:
                self._last_needed = now
                return needed
            if now - self._last_needed < self.keepalive:
                return min(current, high)  # cooling down: keep the processes a while
            return needed

    def update(self, max: int | None = None, min: int | None = None) -> tuple[int, int]:
        """Change the bounds (Celery's ``autoscale`` control command); returns ``(max, min)``."""
        with self._lock:
            high = self.max_concurrency if max is None else max
            low = self.min_concurrency if min is None else min
            high, low = parse_autoscale((high, low))
            self.max_concurrency, self.min_concurrency = high, low
        return high, low

    def force_scale_up(self, n: int) -> None:
        """Grow by ``n`` now, raising ``max`` if needed (Celery's ``pool_grow``)."""
        with self._lock:
            size = self.pool.size + n
            self.max_concurrency = max(self.max_concurrency, size)
            self._last_needed = self._clock()
        self.pool.resize(size)

    def force_scale_down(self, n: int) -> None:
        """Shrink by ``n`` now, lowering ``min`` if needed (Celery's ``pool_shrink``)."""
        with self._lock:
            size = max(1, self.pool.size - n)
            self.min_concurrency = min(self.min_concurrency, size)
        self.pool.resize(size)

    def info(self) -> dict[str, int]:
        """Return the bounds and current size (``inspect stats``' ``autoscaler`` entry)."""
        return {"max": self.max_concurrency, "min": self.min_concurrency, "qty": self.pool.size}

    # -- the thread ---------------------------------------------------------------------------
    def tick(self) -> None:
        """Look at demand once and resize the pool if the decision differs from its size."""
        current = self.pool.size
        try:
            waiting = self.waiting()
        except Exception as exc:  # the broker is away: decide on busy children alone
            logger.debug("autoscale: cannot read queue sizes: %r", exc)
            waiting = 0
        busy = self.pool.busy()
        size = self.decide(current, busy, waiting)
        if size != current:
            logger.info(
                "Autoscale: %s to %d processes (%d busy, %d waiting; min %d, max %d)",
                "scaling up" if size > current else "scaling down",
                size,
                busy,
                waiting,
                self.min_concurrency,
                self.max_concurrency,
            )
            self.pool.resize(size)

    def start(self, stopping: threading.Event) -> None:
        """Tick every :data:`TICK_INTERVAL` seconds on a daemon thread until ``stopping``."""

        def loop() -> None:
            while not stopping.wait(TICK_INTERVAL):
                try:
                    self.tick()
                except Exception:
                    logger.exception("autoscale tick failed; trying again")

        self._thread = threading.Thread(target=loop, name="chard-autoscale", daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread to see ``stopping`` (it does within one tick)."""
        if self._thread is not None:
            self._thread.join(timeout)
