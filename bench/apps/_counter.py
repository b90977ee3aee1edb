"""The one thing every bench task does: ``INCR`` a Redis counter (how a drain is seen to end).

``BENCH_COUNTER_URL`` and ``BENCH_COUNTER_KEY`` come from ``bench/run.py``. The client is made
on first use, in the worker process that runs the task (after any fork).
"""

import os

import redis

_client: redis.Redis | None = None


def incr() -> None:
    """Count one task done."""
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["BENCH_COUNTER_URL"])
    _client.incr(os.environ["BENCH_COUNTER_KEY"])
