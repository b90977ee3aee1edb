"""Celery side of the benchmark: the same two tasks as ``benchapp``."""

import os

from celery import Celery

app = Celery(
    "benchapp",
    broker=os.environ["BENCH_BROKER_URL"],
    backend=os.environ.get("BENCH_BACKEND_URL") or os.environ["BENCH_BROKER_URL"],
)
app.conf.broker_connection_retry_on_startup = True


@app.task(ignore_result=True)
def drain() -> None:
    """Do nothing, store nothing (enqueue and drain benchmarks)."""


@app.task
def noop() -> None:
    """Do nothing; its result is stored (end-to-end and round-trip benchmarks)."""
