"""Celery side of bench/canvas.py (same tasks as _canvas_chard_app.py)."""

import os

from celery import Celery

app = Celery("bench_canvas", broker=os.environ["BENCH_URL"], backend=os.environ["BENCH_URL"])
app.conf.update(result_expires=600, worker_prefetch_multiplier=16)


@app.task
def noop(*args):
    return None


@app.task
def count(values):
    return len(values)
