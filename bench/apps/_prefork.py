"""The floors' worker: a parent and 2 forked processes, like a prefork pool, until SIGTERM."""

import os
import signal
import sys
from collections.abc import Callable


def run_forked(work: Callable[[], None], processes: int = 2) -> None:
    """Fork ``processes`` children running ``work``; SIGTERM to the parent stops them all."""
    children = []
    for _ in range(processes):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
            work()
            os._exit(0)
        children.append(pid)

    def stop(*_: object) -> None:
        for pid in children:
            os.kill(pid, signal.SIGTERM)
        for pid in children:
            os.waitpid(pid, 0)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    for pid in children:
        os.waitpid(pid, 0)
