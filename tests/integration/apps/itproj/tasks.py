"""Tasks that exercise the worker's edges: death, time limits, retries, async."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

from chard.exceptions import SoftTimeLimitExceeded

from .celery import app


@app.task
def add(x, y):
    return x + y


@app.task(bind=True)
def whoami(self):
    r = self.request
    return {
        "id": r.id,
        "retries": r.retries,
        "hostname": r.hostname,
        "queue": r.delivery_info.get("routing_key"),
        "root_id": r.root_id,
        "is_eager": r.is_eager,
    }


@app.task
def sleep_then_mark(seconds, marker):
    """Sleep, then append one line to ``marker``: the number of lines = the number of runs."""
    time.sleep(seconds)
    with open(marker, "a") as fh:
        fh.write(f"{os.getpid()}\n")
    return seconds


@app.task
def block_until(gate, timeout=30):
    """Keep a pool slot busy until the file ``gate`` exists (the test creates it)."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.path.exists(gate)


@app.task
def announce_then_sleep(path, seconds):
    """Write ``started`` to ``path``, sleep, then append ``finished``: shows how far it got."""
    with open(path, "w") as fh:
        fh.write("started\n")
    time.sleep(seconds)
    with open(path, "a") as fh:
        fh.write("finished\n")
    return seconds


@app.task
def die_always():
    os.kill(os.getpid(), signal.SIGKILL)


@app.task
def die_once(marker):
    """Kill its own process on the first run only; succeed on the redelivery."""
    path = Path(marker)
    if not path.exists():
        path.write_text("died\n")
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


@app.task(time_limit=1)
def hang():
    time.sleep(60)


@app.task(soft_time_limit=0.5)
def soft_limited():
    try:
        time.sleep(10)
    except SoftTimeLimitExceeded:
        return "soft limit observed"
    return "not interrupted"


@app.task(bind=True, max_retries=3)
def flaky(self, marker, failures):
    """Fail ``failures`` times (counted in ``marker``), retrying quickly, then succeed."""
    path = Path(marker)
    count = int(path.read_text()) if path.exists() else 0
    if count < failures:
        path.write_text(str(count + 1))
        raise self.retry(exc=ValueError(f"attempt {count}"), countdown=0.1)
    return f"ok after {count} retries"


@app.task(autoretry_for=(KeyError,), retry_backoff=0.1, retry_jitter=False, max_retries=2)
def always_keyerror():
    raise KeyError("missing")


@app.task
def boom():
    raise ValueError("bad input")


class CustomError(Exception):
    pass


@app.task
def custom_boom():
    raise CustomError("custom", 42)


@app.task(track_started=True)
def slow(seconds):
    time.sleep(seconds)
    return seconds


@app.task
async def async_add(x, y):
    await asyncio.sleep(0.01)
    return x + y


@app.task(acks_late=False)
def early_ack_die():
    os.kill(os.getpid(), signal.SIGKILL)


@app.task(bind=True)
def progress(self):
    self.update_state(state="PROGRESS", meta={"current": 50, "total": 100})
    time.sleep(0.5)
    return "done"


@app.task(bind=True, track_started=True)
def progress_until(self, gate, timeout=30):
    """Report PROGRESS, then hold it until the file ``gate`` exists (the test creates it)."""
    self.update_state(state="PROGRESS", meta={"current": 50, "total": 100})
    deadline = time.monotonic() + timeout
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
    return "done"


@app.task
def pid():
    """Return the id of the process that ran it."""
    return os.getpid()


@app.task
def record(marks):
    """Append this run's task id to ``marks`` (one ``O_APPEND`` write): lines = runs."""
    fd = os.open(marks, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{record.request.id}\n".encode())
    finally:
        os.close(fd)


#: Memory a task keeps for the rest of its process's life (see hog).
_kept: list[bytes] = []


@app.task
def hog(megabytes):
    """Keep ``megabytes`` of touched memory in this process; return its pid."""
    _kept.append(bytes(range(256)) * (megabytes * 4096))
    return os.getpid()


#: Tasks of this process that have reached meet_all.
_met: list[int] = []


@app.task
def meet_all(n, timeout=30):
    """Return True once ``n`` meet_all tasks run in this process at the same time."""
    _met.append(1)
    deadline = time.monotonic() + timeout
    while len(_met) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    return len(_met) >= n
