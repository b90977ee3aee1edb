"""itproj, plus a hook in the worker's main process that resizes its pool on request.

The test appends ``pool_grow N`` or ``pool_shrink N`` lines to the file named by
``RESIZE_REQUESTS``; a thread started on ``worker_ready`` calls that method of the
Worker: the calls the ``pool_grow``/``pool_shrink`` control commands make.
"""

import os
import threading
import time
from pathlib import Path

from itproj import tasks  # noqa: F401 - the tasks this node runs
from itproj.celery import app

from chard import signals


@app.task
def announce_then_block(path, gate, timeout=60):
    """Write this process's id to ``path``, then wait until the file ``gate`` exists."""
    Path(path).write_text(str(os.getpid()))
    deadline = time.monotonic() + timeout
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.path.exists(gate)


@signals.worker_ready.connect
def follow_resize_requests(sender, **kwargs):
    path = Path(os.environ["RESIZE_REQUESTS"])

    def follow():
        done = 0
        while True:
            lines = path.read_text().splitlines() if path.exists() else []
            for line in lines[done:]:
                operation, n = line.split()
                size = getattr(sender, operation)(int(n))
                with open(f"{path}.done", "a") as fh:
                    fh.write(f"{operation} {n} -> {size}\n")
            done = len(lines)
            time.sleep(0.02)  # a test hook: no event to wait on across processes

    threading.Thread(target=follow, name="resize-requests", daemon=True).start()
