"""Huey side of the benchmark: the same two tasks and client adapter as ``benchapp``.

On Redis, ``RedisHuey`` with ``notify_result=True``: a blocking ``get()`` waits on a BLPOP
(Huey's fastest mode) instead of polling. On SQLite (``BENCH_BROKER_URL=sqlite:///…``),
``SqliteHuey``, whose ``get()`` polls (every ``BENCH_POLL`` seconds at most). Huey stores no
``None`` result unless told, so the stored task returns True.
"""

import os
from typing import Any

from _counter import incr
from huey import RedisHuey, SqliteHuey

URL = os.environ["BENCH_BROKER_URL"]
POLL = float(os.environ.get("BENCH_POLL", "1.0"))
if URL.startswith("sqlite:///"):
    huey = SqliteHuey("bench", filename=URL.removeprefix("sqlite:///"))
else:
    huey = RedisHuey("bench", url=URL, notify_result=True)


@huey.task()
def drain() -> None:
    """Count, store nothing (None is not stored)."""
    incr()


@huey.task()
def noop() -> bool:
    """Count; its result is stored."""
    incr()
    return True


def send() -> None:
    drain()


def call() -> Any:
    return noop()


def wait(handle: Any) -> None:
    handle.get(blocking=True, timeout=30, max_delay=POLL)


def wait_all(handles: list[Any]) -> None:
    for handle in handles:
        handle.get(blocking=True, timeout=300, max_delay=POLL)
