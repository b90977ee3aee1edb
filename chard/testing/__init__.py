"""Helpers for testing code that uses chard, without sleeping.

* :func:`run_burst` drains the app's queues with an in-process worker and returns
  its counters: the arq/huey way of driving work deterministically.
* :func:`start_worker` runs a worker in a background thread for the duration of a
  ``with`` block, for tests that wait on results.

Library code never imports this package.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from chard._utils.clock import FakeClock
from chard.app import Celery
from chard.worker.held import ConsumerStats
from chard.worker.worker import Worker

__all__ = ["FakeClock", "run_burst", "start_worker"]


def run_burst(
    app: Celery, queues: Sequence[str] | None = None, *, pool: str = "solo", concurrency: int = 1
) -> ConsumerStats:
    """Run every message waiting in ``queues`` (and what they send), then return the counters."""
    worker = Worker(app, pool=pool, concurrency=concurrency, queues=queues, burst=True)
    return worker.start()


@contextmanager
def start_worker(
    app: Celery,
    queues: Sequence[str] | None = None,
    *,
    pool: str = "threads",
    concurrency: int = 2,
) -> Iterator[Worker]:
    """Run a worker in a background thread while the block runs; stop it warmly after."""
    worker = Worker(app, pool=pool, concurrency=concurrency, queues=queues)
    thread = threading.Thread(target=worker.start, name="chard-test-worker", daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        while worker.consumer is None and thread.is_alive():
            thread.join(0.01)  # started, not yet wired: wait for the consumer to exist
        worker.stop()
        thread.join(timeout=30)
