"""The gevent pool: many I/O-bound jobs at once in one process, each on a greenlet.

For tasks that mostly wait (HTTP calls, sleeps, database round trips): ``-c 500``
costs 500 greenlets, not 500 threads or processes. The process must be monkey-patched
before anything opens a socket or starts a thread (:func:`monkey_patch`, which ``chard
worker -P gevent`` calls before it loads the app), so that the consumer's own threads
and every blocking call in a task yield to the others.

Soft time limits are a :class:`gevent.Timeout` that raises
:class:`~chard.exceptions.SoftTimeLimitExceeded` in the task where it waits. Hard
time limits are not enforced (nothing can kill one greenlet that does not yield
without killing the process), as with threads: use the prefork pool for those. A warm
stop lets running greenlets finish; a cold stop kills them and reports them lost, so
their messages go back to the queue.

gevent is an extra (``pip install 'chard[gevent]'``); this is the only module that
imports it. eventlet is not supported: see :data:`EVENTLET_UNSUPPORTED`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from chard.exceptions import ImproperlyConfigured, SoftTimeLimitExceeded
from chard.worker.pools.base import (
    Job,
    OnDone,
    Outcome,
    Pool,
    PoolStats,
    call_on_done,
    run_target,
)

logger = logging.getLogger(__name__)

#: Why ``-P eventlet`` is refused. eventlet 0.41 imports on Python 3.11, but warns on
#: import that it is deprecated, in bugfix-only mode, and not to be used for new projects.
EVENTLET_UNSUPPORTED = (
    "the eventlet pool is not supported: eventlet is deprecated by its maintainers "
    "(bugfix-only, not for new projects); use -P gevent (pip install 'chard[gevent]') "
    "for many I/O-bound tasks per process"
)


def _import_gevent() -> Any:
    try:
        import gevent
    except ImportError:
        raise ImproperlyConfigured(
            "the gevent pool needs gevent; install it with pip install 'chard[gevent]'"
        ) from None
    return gevent


def monkey_patch() -> None:
    """Make sockets, threads, locks and sleeps cooperative: call before the app is loaded.

    Raises:
        ImproperlyConfigured: gevent is not installed.
    """
    _import_gevent()
    from gevent import monkey

    # chard's own modules imported ssl (through asyncio) but made no SSL context or
    # socket yet: what gevent's warning is about cannot have happened.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        monkey.patch_all()


def is_patched() -> bool:
    """Return whether :func:`monkey_patch` ran in this process (threads are greenlets)."""
    try:
        from gevent import monkey
    except ImportError:
        return False
    return bool(monkey.is_module_patched("threading"))


class GeventPool(Pool):
    """Run each job on its own greenlet, at most ``concurrency`` at once."""

    kind = "gevent"

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
        self._gevent = _import_gevent()
        self._lock = threading.Lock()  # a gevent lock once patched
        self._idle = threading.Condition(self._lock)
        self._running: dict[Any, tuple[Job, OnDone]] = {}  # greenlet -> its job
        self._processed = 0
        self._is_running = False

    def start(self) -> None:
        """Run the initializer; the pool is then ready for :meth:`submit`."""
        if self.initializer is not None:
            self.initializer()
        with self._lock:
            self._is_running = True

    def submit(self, job: Job, on_done: OnDone) -> None:
        """Start ``job`` on a new greenlet; returns at once."""
        if job.time_limit is not None:
            self._warn_once(
                "hard", "the gevent pool does not enforce hard time limits; ignoring them"
            )
        with self._lock:
            if not self._is_running or len(self._running) >= self.concurrency:
                raise RuntimeError(f"gevent pool has no free slot for job {job.id!r}")
            greenlet = self._gevent.Greenlet(self._run, job, on_done)
            self._running[greenlet] = (job, on_done)
        greenlet.start()

    def _run(self, job: Job, on_done: OnDone) -> None:
        greenlet = self._gevent.getcurrent()
        value: object = None
        try:
            with self._soft_limit(job.soft_time_limit):
                value = run_target(self.target, job)
        except SoftTimeLimitExceeded:  # fired after the target returned, before the cancel
            logger.debug("soft time limit of job %s fired after it returned", job.id)
        with self._lock:
            is_reportable = self._running.pop(greenlet, None) is not None
            if is_reportable:
                self._processed += 1
            self._idle.notify_all()
        if is_reportable:  # not if a cold stop reported it lost already
            call_on_done(on_done, Outcome(job, "done", value=value, pid=id(greenlet)))

    @contextlib.contextmanager
    def _soft_limit(self, seconds: float | None) -> Iterator[None]:
        if not seconds or seconds <= 0:
            yield
            return
        timeout = self._gevent.Timeout(seconds, SoftTimeLimitExceeded())
        timeout.start()
        try:
            yield
        finally:
            timeout.close()

    def free_slots(self) -> int:
        """Return ``concurrency`` minus the running greenlets (0 once stopping)."""
        with self._lock:
            return max(0, self.concurrency - len(self._running)) if self._is_running else 0

    def resize(self, concurrency: int) -> None:
        """Change how many greenlets may run; running ones above the new size finish first."""
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        with self._lock:
            self.concurrency = concurrency

    def stop(self, graceful: bool = True, timeout: float | None = None) -> None:
        """Stop; see :meth:`Pool.stop`. A cold stop kills the greenlets and reports them lost."""
        with self._lock:
            was_running, self._is_running = self._is_running, False
            if not was_running:
                return
            if graceful:
                self._idle.wait_for(lambda: not self._running, timeout)
            abandoned = list(self._running.items())
            self._running.clear()
            self._processed += len(abandoned)
        for greenlet, (job, on_done) in abandoned:
            logger.warning("abandoning job %s still running in the gevent pool", job.id)
            greenlet.kill(block=False)
            call_on_done(on_done, Outcome(job, "lost"))

    def statistics(self) -> PoolStats:
        """Return a snapshot; ``pids`` holds the ids of the running greenlets."""
        with self._lock:
            ids = [id(g) for g in self._running]
            return PoolStats(self.kind, self.concurrency, len(ids), self._processed, ids)
