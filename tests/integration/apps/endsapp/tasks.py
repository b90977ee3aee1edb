"""Tasks that end in every way: return, raise, retry out, die, overrun, return junk."""

import os
import time

from .celery import app, note


@app.task
def add(x, y):
    return x + y


@app.task
def xsum(numbers):
    return sum(numbers)


@app.task
def die(*args):
    """The process running it exits at once: a worker lost, every delivery."""
    os._exit(1)


@app.task(time_limit=1)
def overrun(*args):
    """Run past the hard time limit: the supervisor kills the child."""
    time.sleep(60)


@app.task
def unencodable(*args):
    """Return a value the JSON result serializer cannot encode."""
    return object()


@app.task
def boom(*args):
    raise ValueError("boom")


@app.task(bind=True, max_retries=1)
def retry_out(self, *args):
    raise self.retry(exc=KeyError("still failing"), countdown=0)


@app.task
def errback(task_id):
    """An errback: note each call, so the test can count them."""
    note(f"errback {task_id}")
    return task_id


@app.task(acks_late=False)
def die_acked_early(*args):
    """Acked on start (Celery's default), then its process exits: no lease is left."""
    os._exit(1)


@app.task(ignore_result=True)
def unencodable_ignored(*args):
    """Nothing stored, but the chain's next step cannot carry this value as its argument."""
    return object()


@app.task(ignore_result=True)
def quiet(tag):
    """Store nothing; note the run so the test knows it happened."""
    note(f"quiet {tag}")
    return tag
