"""Procrastinate side of the PostgreSQL comparison: the same two tasks as ``benchapp``.

Configured from the environment by ``bench/run.py``: ``BENCH_PROCRASTINATE_URL`` (its
``options=-c search_path=…`` puts Procrastinate's tables in a schema of the run's own).
Procrastinate stores no results: ``wait`` polls the job's ``succeeded`` status instead
(every 0.5 ms for one job, 5 ms for many). ``session()`` opens the app for the client.
"""

import contextlib
import os
import time
from collections.abc import Iterator
from typing import Any

import procrastinate
import psycopg
from _counter import incr

URL = os.environ["BENCH_PROCRASTINATE_URL"]
app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=URL))
_conn: Any = None


@app.task(name="drain")
def drain() -> None:
    """Count (enqueue and drain benchmarks)."""
    incr()


@app.task(name="noop")
def noop() -> None:
    """Count (end-to-end and round-trip benchmarks, timed to its job's success)."""
    incr()


@contextlib.contextmanager
def session() -> Iterator[None]:
    global _conn
    with app.open(), psycopg.connect(URL, autocommit=True) as _conn:
        yield


def _done(ids: list[int]) -> int:
    row = _conn.execute(
        "SELECT count(*) FROM procrastinate_jobs WHERE id = ANY(%s) AND status = 'succeeded'",
        (ids,),
    ).fetchone()
    return int(row[0])


def send() -> None:
    drain.defer()


def send_many(n: int) -> None:
    drain.batch_defer(*({} for _ in range(n)))


def call() -> Any:
    return noop.defer()


def wait(handle: Any) -> None:
    while _done([handle]) < 1:
        time.sleep(0.0005)


def wait_all(handles: list[Any]) -> None:
    while _done(handles) < len(handles):
        time.sleep(0.005)
