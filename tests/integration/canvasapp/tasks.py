"""The tasks of Celery's "Next steps" guide, plus a few to exercise failures."""

from __future__ import annotations

from chard import group

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


@app.task(bind=True)
def replace_with_add(self, x):
    """Replace this task by ``add(x, 100)`` (Celery's ``self.replace``)."""
    return self.replace(add.s(x, 100))


@app.task(bind=True)
def replace_with_chain(self, x):
    return self.replace(add.s(x, 1) | mul.s(2))


@app.task(bind=True)
def replace_with_group(self, n):
    return self.replace(group(add.s(i, i) for i in range(n)))


@app.task(bind=True)
def replace_with_boom(self, *args):
    return self.replace(boom.s())


@app.task
def record_failure(task_id):
    """An errback in Celery's older form: one parameter, sent as a task with the failed id."""
    return [task_id]


@app.task
def report_failure(request, exc, traceback, report_id):
    """An errback in Celery's form, called inline by the worker: stores what it was given."""
    summary = [request.id, type(exc).__name__, str(exc), "Traceback" in (traceback or "")]
    app.backend.store_result(report_id, summary, "SUCCESS")


@app.task(bind=True)
def whoami(self):
    """What the worker tells a task about its message."""
    request = self.request
    return {
        "priority": request.delivery_info.get("priority"),
        "properties": request.properties,
        "parent_id": request.parent_id,
    }
