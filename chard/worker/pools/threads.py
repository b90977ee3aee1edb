"""The threads pool: N worker threads fed from one queue.

For I/O-bound tasks, where processes buy nothing and cost memory. Threads cannot be killed, so
time limits are not enforced here; use the prefork pool for those.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from chard.worker.pools.base import (
    Job,
    OnDone,
    Outcome,
    Pool,
    PoolStats,
    call_on_done,
    check_concurrency,
    run_target,
)

logger = logging.getLogger(__name__)

#: A queued job: a token that identifies this submission, the job and its callback.
_Entry = tuple[int, Job, OnDone]


class ThreadPool(Pool):
    """Run jobs on ``concurrency`` daemon threads.

    ``initializer`` runs once in each thread, before its first job (e.g. to open a per-thread
    connection). ``max_tasks_per_child`` and both time limits are ignored, with a warning. Threads
    are daemons so that a job abandoned by a cold stop cannot keep the process alive.
    """

    kind = "threads"

    def __init__(
        self,
        target: Callable[[Any], Any],
        concurrency: int,
        *,
        max_tasks_per_child: int | None = None,
        initializer: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(
            target, concurrency, max_tasks_per_child=max_tasks_per_child, initializer=initializer
        )
        if max_tasks_per_child is not None:
            logger.warning("the threads pool ignores max_tasks_per_child=%d", max_tasks_per_child)
        self._queue: queue.SimpleQueue[_Entry | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._threads: list[threading.Thread] = []
        self._tokens = itertools.count()
        #: Submitted and not yet reported, by token; a cold stop reports and empties it.
        self._pending: dict[int, _Entry] = {}
        self._processed = 0
        self._is_running = False

    def start(self) -> None:
        """Start the worker threads."""
        with self._lock:
            self._is_running = True
            self._add_threads(self.concurrency)

    def _add_threads(self, count: int) -> None:
        for _ in range(count):
            thread = threading.Thread(target=self._work, name="chard-pool-thread", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _work(self) -> None:
        if self.initializer is not None:
            self.initializer()
        ident = threading.get_ident()
        while (entry := self._queue.get()) is not None:
            token, job, on_done = entry
            value = run_target(self.target, job)
            with self._lock:
                # Gone when a cold stop already reported the job lost: report it once only.
                is_reportable = self._pending.pop(token, None) is not None
                if is_reportable:
                    self._processed += 1
                self._idle.notify_all()
            if is_reportable:
                call_on_done(on_done, Outcome(job, "done", value=value, pid=ident))
        with self._lock:
            self._threads.remove(threading.current_thread())

    def submit(self, job: Job, on_done: OnDone) -> None:
        """Queue ``job`` for the next free thread; returns at once."""
        if job.soft_time_limit is not None or job.time_limit is not None:
            self._warn_once(
                "limits", "the threads pool does not support time limits; ignoring them"
            )
        with self._lock:
            if self._free_slots() <= 0:
                raise RuntimeError(f"threads pool has no free slot for job {job.id!r}")
            token = next(self._tokens)
            entry = (token, job, on_done)
            self._pending[token] = entry
        self._queue.put(entry)

    def free_slots(self) -> int:
        """Return ``concurrency`` minus the jobs submitted and not yet finished."""
        with self._lock:
            return self._free_slots()

    def _free_slots(self) -> int:
        return max(0, self.concurrency - len(self._pending)) if self._is_running else 0

    def resize(self, concurrency: int) -> None:
        """Start threads, or queue one exit marker per surplus thread (which finishes its job)."""
        check_concurrency(concurrency)
        with self._lock:
            delta = concurrency - self.concurrency
            self.concurrency = concurrency
            if not self._is_running:
                return
            if delta > 0:
                self._add_threads(delta)
        for _ in range(-delta):
            self._queue.put(None)

    def stop(self, graceful: bool = True, timeout: float | None = None) -> None:
        """Stop the threads; see :meth:`Pool.stop`.

        Abandoned jobs are reported ``lost`` from the calling thread; their threads run on as
        daemons and their eventual results are dropped.
        """
        with self._lock:
            was_running, self._is_running = self._is_running, False
            if not was_running:
                return
            if graceful:
                self._idle.wait_for(lambda: not self._pending, timeout)
            abandoned = list(self._pending.values())
            self._pending.clear()
            self._processed += len(abandoned)
            threads = list(self._threads)
        for _ in threads:
            self._queue.put(None)
        for _, job, on_done in abandoned:
            logger.warning("abandoning job %s still running in the threads pool", job.id)
            call_on_done(on_done, Outcome(job, "lost"))
        if not abandoned:
            for thread in threads:
                thread.join()

    def statistics(self) -> PoolStats:
        """Return a snapshot; ``pids`` holds the thread idents."""
        with self._lock:
            idents = [t.ident for t in self._threads if t.ident is not None]
            return PoolStats(
                self.kind, self.concurrency, len(self._pending), self._processed, idents
            )
