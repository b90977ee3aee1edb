"""The client's lock: a thread that wants it interrupts the socket wait that holds it.

pika is not thread-safe, so every use of a connection holds one lock, including a wait
on its socket (a worker waiting for a push, ``get()`` waiting for an rpc:// reply). Such
a wait used to be cut into 50 ms slices so that another thread (an ack, a publish, the
lease watchdog) could get in between: an idle worker process woke 20 times a second
for nothing (3% of a core on a worker node). Now the wait blocks for as long as it is
asked to, and a thread that finds the lock taken wakes it instead: it registers as a
contender, then, if the holder is waiting on the socket, calls ``wake`` (pika's
``add_callback_threadsafe``, which ends ``process_data_events`` at once). A holder about
to wait first checks for contenders and does not wait if there are any, so a contender
that comes between the check and the wait is still seen (it finds ``waiting`` set).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType


class WakingLock:
    """A re-entrant lock whose contended acquire wakes a holder waiting on the socket."""

    def __init__(self, wake: Callable[[], None]) -> None:
        self._lock = threading.RLock()
        self._count = threading.Lock()  # guards contenders
        self._wake = wake
        self.contenders = 0
        #: Set by the holder around a socket wait that a contender may interrupt.
        self.waiting = False

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if self._lock.acquire(blocking=False):
            return True
        if not blocking:
            return False
        with self._count:
            self.contenders += 1
        try:
            if self.waiting:
                self._wake()
            return self._lock.acquire(True, timeout)
        finally:
            with self._count:
                self.contenders -= 1

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()
