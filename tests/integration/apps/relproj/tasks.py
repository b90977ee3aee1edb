"""Tasks whose runs are observable outside the worker: they append to a file, not to Redis.

A file survives a Redis restart and is written with one ``O_APPEND`` write per run, so the
number of lines naming a task id is the number of times that task ran.
"""

from __future__ import annotations

import os
import signal

from .celery import app


@app.task
def record(marks: str, n: int) -> int:
    """Append ``<task id>`` to ``marks`` once per run; return ``n``."""
    line = f"{record.request.id}\n".encode()
    fd = os.open(marks, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    return n


@app.task
def poison(x: int) -> str:
    """Kill its own process, unless the worker runs the fixed release (RELPROJ_FIXED=1)."""
    if os.environ.get("RELPROJ_FIXED") != "1":
        os.kill(os.getpid(), signal.SIGKILL)
    return f"fixed {x}"


@app.task(bind=True)
def describe(self, x: int, *, label: str = "") -> str:
    return f"{label}{x}"
