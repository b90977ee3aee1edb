"""The tasks of Celery's "Next steps" guide, plus a few to exercise failures."""

from __future__ import annotations

from .celery import app


@app.task
def add(x, y):
    return x + y


@app.task
def mul(x, y):
    return x * y


@app.task
def xsum(numbers):
    return sum(numbers)


@app.task
def noop(*args, **kwargs):
    return None


@app.task
def boom(*args):
    raise ValueError("boom")


@app.task
def upload(name):
    return f"uploaded:{name}"


@app.task
def apply_filter(document, name):
    return f"{document}|{name}"


@app.task
def collect(*args):
    """Return its arguments: shows exactly what a callback or errback received."""
    return list(args)
