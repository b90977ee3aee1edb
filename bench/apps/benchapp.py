"""chard side of the benchmark: the same two tasks as ``benchapp_celery``.

Configured from the environment by ``bench/run.py``: ``BENCH_BROKER_URL`` (broker, and
results unless ``BENCH_BACKEND_URL`` is set: ``rpc://`` on RabbitMQ).
"""

import os

from chard import Celery

app = Celery(
    "benchapp",
    broker=os.environ["BENCH_BROKER_URL"],
    backend=os.environ.get("BENCH_BACKEND_URL") or os.environ["BENCH_BROKER_URL"],
)


@app.task(ignore_result=True)
def drain() -> None:
    """Do nothing, store nothing (enqueue and drain benchmarks)."""


@app.task
def noop() -> None:
    """Do nothing; its result is stored (end-to-end and round-trip benchmarks)."""
