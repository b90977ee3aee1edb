"""The raw redis-py floor: the least any Redis task queue can do for the same two tasks.

Design (one round trip per message on each side, no envelope beyond an id and a flag):

- send: ``LPUSH floor.queue <id>|<r>`` (``r`` = 1 if the caller wants a result).
- worker (``python -m benchapp_floor``: a parent and 2 forked processes, like a prefork
  pool): ``BRPOP floor.queue``, the task's ``INCR`` (on the counter's connection, as in
  every system), then, if ``r``, ``LPUSH floor.result.<id> ""``.
- result: the caller ``BLPOP floor.result.<id>`` (which also deletes the key).

No acks, no retries, no expiry: what it skips is what a real queue pays for.
"""

import os
import uuid
from typing import Any

import redis
from _prefork import run_forked

URL = os.environ["BENCH_BROKER_URL"]
QUEUE = "floor.queue"
client = redis.Redis.from_url(URL)


def send() -> None:
    client.lpush(QUEUE, b"0|0")


def send_many(n: int) -> None:
    client.lpush(QUEUE, *([b"0|0"] * n))


def call() -> Any:
    task_id = uuid.uuid4().hex
    client.lpush(QUEUE, f"{task_id}|1")
    return task_id


def wait(handle: Any) -> None:
    if client.blpop([f"floor.result.{handle}"], timeout=30) is None:
        raise TimeoutError(handle)


def wait_all(handles: list[Any]) -> None:
    for handle in handles:
        if client.blpop([f"floor.result.{handle}"], timeout=300) is None:
            raise TimeoutError(handle)


def work() -> None:
    """One worker process: take, count, answer; until SIGTERM."""
    conn = redis.Redis.from_url(URL)
    counter = redis.Redis.from_url(os.environ["BENCH_COUNTER_URL"])
    key = os.environ["BENCH_COUNTER_KEY"]
    while True:
        item = conn.brpop([QUEUE], timeout=1)
        if item is None:
            continue
        task_id, wants = item[1].split(b"|")
        counter.incr(key)  # the task (the counter is in a db of its own, as for every system)
        if wants == b"1":
            conn.lpush(b"floor.result." + task_id, b"")


if __name__ == "__main__":
    run_forked(work)
