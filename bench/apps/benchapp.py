"""chard side of the benchmark: the same two tasks as ``benchapp_celery``.

Configured from the environment by ``bench/run.py``: ``BENCH_BROKER_URL`` (broker and
results) and ``BENCH_COUNTER_URL`` + ``BENCH_COUNTER_KEY`` (where ``count`` adds one).
"""

import os

import redis

from chard import Celery

app = Celery(
    "benchapp", broker=os.environ["BENCH_BROKER_URL"], backend=os.environ["BENCH_BROKER_URL"]
)

_counter: list[redis.Redis] = []  # one client per process, opened after fork


@app.task(ignore_result=True)
def count() -> None:
    """Add one to the completion counter (drain and enqueue benchmarks)."""
    if not _counter:
        _counter.append(redis.Redis.from_url(os.environ["BENCH_COUNTER_URL"]))
    _counter[0].incr(os.environ["BENCH_COUNTER_KEY"])


@app.task
def noop() -> None:
    """Do nothing; its result is stored (end-to-end and round-trip benchmarks)."""
