"""The solo pool: run each job inline, in the thread that submits it.

For debugging and for platforms without fork: no threads, no processes, nothing to go wrong
between the consumer and the task. The cost is that the consumer is blocked while a job runs.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

from chard.exceptions import SoftTimeLimitExceeded
from chard.worker.pools.base import (
    Job,
    OnDone,
    Outcome,
    Pool,
    PoolStats,
    call_on_done,
    install_soft_limit_handler,
    is_main_thread,
    run_target,
    soft_time_limit,
)

logger = logging.getLogger(__name__)


class SoloPool(Pool):
    """Run one job at a time inside :meth:`submit`, calling ``on_done`` before returning.

    ``concurrency`` must be 1. The soft time limit works when jobs are submitted from the main
    thread (it needs SIGALRM); the hard time limit is not supported, since nothing could kill the
    job without killing the worker. ``max_tasks_per_child`` is ignored, and ``initializer`` runs
    once, in :meth:`start`. Since ``on_done`` runs inside :meth:`submit`, a callback that submits
    the next job recurses; queue outcomes and submit from a loop instead.
    """

    kind = "solo"
    #: Whether something outside this process kills a job past its hard time limit (a
    #: prefork child's pool: its supervisor does); if not, limits are ignored with a warning.
    enforces_hard_limits: ClassVar[bool] = False

    def __init__(
        self,
        target: Callable[[Any], Any],
        concurrency: int = 1,
        *,
        max_tasks_per_child: int | None = None,
        initializer: Callable[[], None] | None = None,
    ) -> None:
        _check_one(concurrency)
        super().__init__(
            target, concurrency, max_tasks_per_child=max_tasks_per_child, initializer=initializer
        )
        self._cond = threading.Condition()
        self._is_busy = False
        self._is_running = False
        self._processed = 0
        self._ident: int | None = None  # the thread that ran the latest job

    def start(self) -> None:
        """Run the initializer; the pool is then ready for :meth:`submit`."""
        if self.initializer is not None:
            self.initializer()
        with self._cond:
            self._is_running = True

    def submit(self, job: Job, on_done: OnDone) -> None:
        """Run ``job`` now and call ``on_done``; blocks for the whole job."""
        with self._cond:
            if not self._is_running or self._is_busy:
                raise RuntimeError(
                    f"solo pool cannot take job {job.id!r}; check free_slots() first"
                )
            self._is_busy = True
            self._ident = threading.get_ident()
        try:
            value = self._run(job)
        finally:
            with self._cond:
                self._is_busy = False
                self._processed += 1
                self._cond.notify_all()
        call_on_done(on_done, Outcome(job, "done", value=value, pid=threading.get_ident()))

    def _run(self, job: Job) -> object:
        if job.time_limit is not None and not self.enforces_hard_limits:
            self._warn_once(
                "hard", "the solo pool does not support hard time limits; ignoring them"
            )
        if job.soft_time_limit is None:
            return run_target(self.target, job)
        if not is_main_thread():
            self._warn_once(
                "soft", "the solo pool enforces soft time limits on the main thread only"
            )
            return run_target(self.target, job)
        # The main thread may have its own alarm armed (pytest-timeout does): restore it after.
        previous = signal.getsignal(signal.SIGALRM)
        previous_delay, previous_interval = signal.getitimer(signal.ITIMER_REAL)
        started = time.monotonic()
        install_soft_limit_handler()
        value: object = None
        try:
            with soft_time_limit(job.soft_time_limit):
                value = run_target(self.target, job)
        except SoftTimeLimitExceeded:  # fired after the target returned, before the disarm
            logger.debug("soft time limit of job %s fired after it returned", job.id)
        finally:
            signal.signal(signal.SIGALRM, previous)
            if previous_delay > 0:
                remaining = max(previous_delay - (time.monotonic() - started), 0.001)
                signal.setitimer(signal.ITIMER_REAL, remaining, previous_interval)
        return value

    def free_slots(self) -> int:
        """Return 1 when idle and running, else 0."""
        with self._cond:
            return int(self._is_running and not self._is_busy)

    def resize(self, concurrency: int) -> None:
        """Accept only 1: the solo pool cannot run jobs side by side."""
        _check_one(concurrency)

    def stop(self, graceful: bool = True, timeout: float | None = None) -> None:
        """Refuse new jobs; when graceful, wait up to ``timeout`` for a job running elsewhere.

        A job runs in its submitter's thread, so a cold stop cannot abandon it: the job finishes
        and reports ``done`` as usual.
        """
        with self._cond:
            self._is_running = False
            if graceful:
                self._cond.wait_for(lambda: not self._is_busy, timeout)

    def statistics(self) -> PoolStats:
        """Return a snapshot; ``pids`` holds the ident of the thread that ran the latest job."""
        with self._cond:
            pids = [] if self._ident is None else [self._ident]
            return PoolStats(self.kind, 1, int(self._is_busy), self._processed, pids)


def _check_one(concurrency: int) -> None:
    if concurrency != 1:
        raise ValueError(
            f"the solo pool runs one job at a time, got concurrency={concurrency}; "
            "use the threads or prefork pool for more"
        )
