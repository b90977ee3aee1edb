"""chard side of the benchmark: the same two tasks as every other app in ``bench/apps``.

Configured from the environment by ``bench/run.py``: ``BENCH_BROKER_URL`` (broker, and
results unless ``BENCH_BACKEND_URL`` is set: ``rpc://`` on RabbitMQ). The functions at
the end are the client adapter that ``bench/client.py`` drives (the same in every app).
"""

import os

from _celery_api import CeleryApi
from _counter import incr

from chard import Celery, group

app = Celery(
    "benchapp",
    broker=os.environ["BENCH_BROKER_URL"],
    backend=os.environ.get("BENCH_BACKEND_URL") or os.environ["BENCH_BROKER_URL"],
)


@app.task(ignore_result=True)
def drain() -> None:
    """Count, store nothing (enqueue and drain benchmarks)."""
    incr()


@app.task
def noop() -> None:
    """Count; its result (None) is stored (end-to-end and round-trip benchmarks)."""
    incr()


api = CeleryApi(drain, noop, group, lambda handles: app.GroupResult(None, handles))
send, send_many, call, wait, wait_all = api.send, api.send_many, api.call, api.wait, api.wait_all
