"""PerProcess: a child after fork opens its own entries, whatever a parent thread held."""

from __future__ import annotations

import os
import threading

from chard._utils.perprocess import PerProcess
from tests.helpers import child_exit_code


class Opened:
    def __init__(self) -> None:
        self.pid = os.getpid()

    def close(self) -> None:
        pass


def test_a_child_forked_while_another_thread_holds_the_lock_opens_its_own() -> None:
    # Given a cache opened here, and another thread inside its lock
    cache = PerProcess()
    parent = cache.get("conn", Opened)
    inside, release = threading.Event(), threading.Event()

    def hold() -> None:
        with cache._lock:
            inside.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    assert inside.wait(10)
    try:
        # When this thread forks, Then the child opens its own entry (no wait on the
        # lock the parent's thread still holds)
        pid = os.fork()
        if pid == 0:
            ok = cache.get("conn", Opened).pid == os.getpid()
            os._exit(0 if ok else 1)
        assert child_exit_code(pid) == 0, "the child failed or hung on the parent's lock"
    finally:
        release.set()
        holder.join()
    # And the parent keeps its own
    assert cache.get("conn", Opened) is parent
