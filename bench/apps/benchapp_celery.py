"""Celery side of the benchmark: the same two tasks and client adapter as ``benchapp``.

``BENCH_POLL`` (seconds) is how often a ``get()`` polls a backend that cannot wait (the
``db+sqlite://`` one); the SQLAlchemy transport's worker polls every 10 ms.
"""

import os

from _celery_api import CeleryApi
from _counter import incr
from celery import Celery, group
from celery.result import ResultSet

app = Celery(
    "benchapp",
    broker=os.environ["BENCH_BROKER_URL"],
    backend=os.environ.get("BENCH_BACKEND_URL") or os.environ["BENCH_BROKER_URL"],
)
app.conf.broker_connection_retry_on_startup = True
POLL = float(os.environ.get("BENCH_POLL", "0.5"))
if os.environ["BENCH_BROKER_URL"].startswith("sqla+"):
    # Its transport options go to create_engine(), so the class attribute it is (1 s default)
    from kombu.transport.sqlalchemy import Transport

    Transport.polling_interval = 0.01


@app.task(ignore_result=True)
def drain() -> None:
    """Count, store nothing (enqueue and drain benchmarks)."""
    incr()


@app.task
def noop() -> None:
    """Count; its result (None) is stored (end-to-end and round-trip benchmarks)."""
    incr()


api = CeleryApi(drain, noop, group, lambda handles: ResultSet(handles, app=app), interval=POLL)
send, send_many, call, wait, wait_all = api.send, api.send_many, api.call, api.wait, api.wait_all
