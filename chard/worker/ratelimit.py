"""Task rate limits (``Task.rate_limit``, ``control rate_limit``): spacing a task type's starts.

A limit of ``n/m`` lets one task of that type start every ``60/n`` seconds in this
consumer, the first at once (Celery's token bucket of capacity 1). A message whose
turn has not come waits in the consumer, leased (the heartbeat keeps the lease),
and counts against the prefetch window; other task types go on meanwhile.

A prefork node runs one consumer per child, so each gets an equal ``share`` of the
node's limit: a node with ``-c 2`` and ``10/m`` starts at most 10 a minute in all.
The share follows the pool's size at run time (:class:`PoolShare`, in shared memory),
so the node's limit holds after ``pool_grow``, ``pool_shrink`` or autoscaling too.

The limit is read from the task each time (``task.rate_limit``), so changing it,
by ``app.control.rate_limit`` or in code, takes effect with the next message.
Only messages of rate-limited tasks pay for any of this.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import multiprocessing
from collections.abc import Callable

from chard.brokers.base import Delivery
from chard.protocol.control import parse_rate
from chard.worker.held import Admitted

logger = logging.getLogger("chard.worker")


class PoolShare:
    """Each prefork child's part of the node's rate limits: 1 / the pool size, now.

    Made by the parent before the first fork; the parent sets the size as the pool
    grows or shrinks, and every child reads it, through one shared integer.
    """

    def __init__(self, size: int) -> None:
        self._size = multiprocessing.Value("i", max(1, size), lock=False)

    def resize(self, size: int) -> None:
        """Record the pool's new size (the parent, when it applies a resize)."""
        self._size.value = max(1, size)

    def __call__(self) -> float:
        size: int = self._size.value
        return 1.0 / max(1, size)


class RateLimiter:
    """When may the next task of each rate-limited type start; see the module docstring.

    Args:
        share: this consumer's part of the node's limit (1 / number of consumers), or
            a callable returning it now (a :class:`PoolShare`).
    """

    def __init__(self, share: float | Callable[[], float] = 1.0) -> None:
        self._share: Callable[[], float] = share if callable(share) else (lambda: share)
        # task name -> (the limit as given and the share, seconds between starts, next start)
        self._turns: dict[str, tuple[object, float, float]] = {}

    @property
    def share(self) -> float:
        """This consumer's part of the node's limits now."""
        return self._share()

    def delay(self, name: str, rate: str | float | None, now: float) -> float:
        """Take the next start for a task ``name`` limited to ``rate``; return how long to wait.

        ``now`` is ``time.monotonic()``. A limit that cannot be parsed is logged once
        and not enforced (the client refuses one; a task may declare one).
        """
        share = self._share()
        entry = self._turns.get(name)
        if entry is None or entry[0] != (rate, share):
            entry = ((rate, share), self._interval(name, rate, share), now)
        given, interval, next_start = entry
        if interval <= 0:
            self._turns[name] = entry
            return 0.0
        start = max(now, next_start)
        self._turns[name] = (given, interval, start + interval)
        return start - now

    def _interval(self, name: str, rate: str | float | None, share: float) -> float:
        try:
            per_second = parse_rate(rate) * share
        except ValueError as exc:
            logger.warning("Ignoring the rate limit of task %s: %s", name, exc)
            return 0.0
        return 1.0 / per_second if per_second > 0 else 0.0


class Throttle:
    """One consumer's rate-limited messages, each held until its turn comes.

    Changed by the consumer's dispatcher thread only; other threads (remote control
    asking what is held) read it under the consumer's lock, by a one-step copy.

    Args:
        limiter: gives each task type its turns.
        rate_of: a task's rate limit now, by name (read for every turn, so a changed
            limit applies to the next one).
    """

    def __init__(self, limiter: RateLimiter, rate_of: Callable[[str], str | float | None]) -> None:
        self.limiter = limiter
        self._rate_of = rate_of
        #: The held ones: a heap of (monotonic time of the turn, arrival number, item).
        self._heap: list[tuple[float, int, Admitted]] = []
        self._seq = itertools.count()
        self._changed = False  # a limit changed: every held message gets a new turn

    def __len__(self) -> int:
        return len(self._heap)

    def offer(self, item: Admitted, now: float) -> bool:
        """Take ``item``'s turn: True if it may start now, else it is held until then."""
        rate = self._rate_of(item.message.task)
        wait = self.limiter.delay(item.message.task, rate, now) if rate else 0.0
        if wait <= 0:
            return True
        heapq.heappush(self._heap, (now + wait, next(self._seq), item))
        return False

    def release(self, now: float) -> tuple[list[Admitted], float]:
        """Return the held items whose turn came, and seconds (at most 1) to the next turn."""
        ready: list[Admitted] = []
        if self._changed:  # take every held message's turn again, in the order they wait
            self._changed = False
            held, self._heap = sorted(self._heap), []
            ready = [item for _, _, item in held if self.offer(item, now)]
        while self._heap and self._heap[0][0] <= now:
            ready.append(heapq.heappop(self._heap)[2])
        return ready, min(self._heap[0][0] - now, 1.0) if self._heap else 1.0

    def limits_changed(self) -> None:
        """Give every held message a new turn at the next :meth:`release`."""
        self._changed = True

    def deliveries(self) -> list[Delivery]:
        """The held messages, in the order of their turns (a copy: for ``inspect``)."""
        return [entry[2].delivery for entry in sorted(self._heap.copy())]

    def take_all(self) -> list[Admitted]:
        """Remove and return every held message (the consumer is stopping)."""
        held, self._heap = self._heap, []
        return [entry[2] for entry in held]
