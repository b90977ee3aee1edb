"""Procrastinate side of the PostgreSQL comparison: the same two tasks as ``benchapp``.

Configured from the environment by ``bench/run.py``: ``BENCH_PROCRASTINATE_URL`` (its
``options=-c search_path=…`` puts Procrastinate's tables in a schema of the run's own).
Procrastinate stores no results: the bench waits for a job's ``succeeded`` status instead.
"""

import os

import procrastinate

app = procrastinate.App(
    connector=procrastinate.PsycopgConnector(conninfo=os.environ["BENCH_PROCRASTINATE_URL"])
)


@app.task(name="drain")
def drain() -> None:
    """Do nothing (enqueue and drain benchmarks)."""


@app.task(name="noop")
def noop() -> None:
    """Do nothing (end-to-end and round-trip benchmarks, timed to its job's success)."""
