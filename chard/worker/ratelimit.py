"""Task rate limits (``Task.rate_limit``, ``control rate_limit``): spacing a task type's starts.

A limit of ``n/m`` lets one task of that type start every ``60/n`` seconds in this
consumer, the first at once (Celery's token bucket of capacity 1). A message whose
turn has not come waits in the consumer, leased (the heartbeat keeps the lease),
and counts against the prefetch window; other task types go on meanwhile.

A prefork node runs one consumer per child, so each gets an equal ``share`` of the
node's limit: a node with ``-c 2`` and ``10/m`` starts at most 10 a minute in all.

The limit is read from the task each time (``task.rate_limit``), so changing it,
by ``app.control.rate_limit`` or in code, takes effect with the next message.
Only messages of rate-limited tasks pay for any of this.
"""

from __future__ import annotations

import logging

from chard.protocol.control import parse_rate

logger = logging.getLogger("chard.worker")


class RateLimiter:
    """When may the next task of each rate-limited type start; see the module docstring.

    Args:
        share: this consumer's part of the node's limit (1 / number of consumers).
    """

    def __init__(self, share: float = 1.0) -> None:
        self.share = share
        # task name -> (the limit as given, seconds between starts, next free start)
        self._turns: dict[str, tuple[object, float, float]] = {}

    def delay(self, name: str, rate: str | float | None, now: float) -> float:
        """Take the next start for a task ``name`` limited to ``rate``; return how long to wait.

        ``now`` is ``time.monotonic()``. A limit that cannot be parsed is logged once
        and not enforced (the client refuses one; a task may declare one).
        """
        entry = self._turns.get(name)
        if entry is None or entry[0] != rate:
            entry = (rate, self._interval(name, rate), now)
        given, interval, next_start = entry
        if interval <= 0:
            self._turns[name] = entry
            return 0.0
        start = max(now, next_start)
        self._turns[name] = (given, interval, start + interval)
        return start - now

    def _interval(self, name: str, rate: str | float | None) -> float:
        try:
            per_second = parse_rate(rate) * self.share
        except ValueError as exc:
            logger.warning("Ignoring the rate limit of task %s: %s", name, exc)
            return 0.0
        return 1.0 / per_second if per_second > 0 else 0.0
