"""Dramatiq side of the benchmark: the same two tasks and client adapter as ``benchapp``.

``RedisBroker`` with the ``Results`` middleware on a ``RedisBackend`` (same db); a blocking
``get_result`` waits on a BRPOPLPUSH. Timeouts are in milliseconds.
"""

import os
from typing import Any

import dramatiq
from _counter import incr
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

URL = os.environ["BENCH_BROKER_URL"]
broker = RedisBroker(url=URL)
broker.add_middleware(Results(backend=RedisBackend(url=URL)))
dramatiq.set_broker(broker)


@dramatiq.actor
def drain() -> None:
    """Count, store nothing."""
    incr()


@dramatiq.actor(store_results=True)
def noop() -> None:
    """Count; its result (None) is stored."""
    incr()


def send() -> None:
    drain.send()


def send_many(n: int) -> None:
    dramatiq.group(drain.message() for _ in range(n)).run()


def call() -> Any:
    return noop.send()


def wait(handle: Any) -> None:
    handle.get_result(block=True, timeout=30_000)


def wait_all(handles: list[Any]) -> None:
    for handle in handles:
        handle.get_result(block=True, timeout=300_000)
