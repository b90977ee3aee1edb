"""PerProcess: a child after fork opens its own entries, whatever a parent thread held."""

from __future__ import annotations

import os
import threading
import time

from chard._utils.perprocess import PerProcess


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
        deadline = time.monotonic() + 30
        while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)  # a poll of the child's exit, with a deadline
        if done[0] == 0:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        assert done[0] == pid, "the child hung on the parent's lock"
        assert os.waitstatus_to_exitcode(done[1]) == 0
    finally:
        release.set()
        holder.join()
    # And the parent keeps its own
    assert cache.get("conn", Opened) is parent
