"""The pool interface every execution pool implements, and the helpers they share.

A pool is generic: it runs ``target(payload)`` for each submitted :class:`Job` and reports an
:class:`Outcome` through a callback. It knows nothing about tasks, messages or brokers, so the
consumer can swap threads, solo and a prefork child's inline pool without changing, and pools
are testable alone.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from chard.exceptions import SoftTimeLimitExceeded

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """One unit of work for a pool."""

    #: The task id, for logs and statistics.
    id: str
    #: Passed to ``target(payload)``.
    payload: Any  # opaque to the pool: the consumer decides what a job carries
    #: Seconds after which :class:`~chard.exceptions.SoftTimeLimitExceeded` is raised in the target.
    soft_time_limit: float | None = None
    #: Seconds after which the job's process is killed (a prefork child's pool only).
    time_limit: float | None = None


#: How a job ended: the target returned, or it was abandoned (a cold stop of the threads
#: pool; a prefork child's death is settled by its supervisor, not through a pool).
OutcomeKind = Literal["done", "lost"]


@dataclass(frozen=True)
class Outcome:
    """What happened to a submitted job, delivered to its ``on_done`` callback."""

    job: Job
    kind: OutcomeKind
    #: The target's return value when ``kind == "done"`` (``None`` if the target raised).
    value: Any = None  # whatever the target returns; the pool never looks at it
    #: For ``lost``: the exit code of the job's process, if it had one of its own.
    exitcode: int | None = None
    #: The process id or thread ident that ran the job.
    pid: int | None = None


OnDone = Callable[[Outcome], None]


@dataclass(frozen=True)
class PoolStats:
    """A snapshot of a pool, for ``inspect stats`` and the dashboard."""

    kind: str
    concurrency: int
    busy: int
    #: Jobs finished since start, whatever their outcome.
    processed: int
    #: Process ids or thread idents.
    pids: list[int]


class Pool(ABC):
    """Run ``target(payload)`` for submitted jobs with bounded concurrency.

    Contract shared by every implementation:

    - ``on_done`` is called exactly once per submitted job, from a pool thread (solo: the thread
      that called :meth:`submit`), never while the pool holds an internal lock, so it may call
      :meth:`submit` again. An exception raised by ``on_done`` is logged and swallowed.
    - The target is expected to catch task errors itself and return a value. If it raises anyway,
      the traceback is logged and the job is reported ``done`` with ``value=None``.
    - Methods are thread-safe, except that :meth:`stop` must not be called from ``on_done``.
    - :meth:`terminate` ends a running job where the pool can (none here: see its docstring).

    Args:
        target: Called with each job's payload.
        concurrency: How many jobs may run at once.
        max_tasks_per_child: Kept for the pools' common signature; a prefork node recycles
            its child processes itself (:mod:`chard.worker.supervisor`).
        initializer: Called once in each execution context before its first job (each
            thread, or the solo caller at :meth:`start`).

    Raises:
        ValueError: ``concurrency`` or ``max_tasks_per_child`` is below 1.
    """

    #: The name :func:`chard.worker.pools.create_pool` knows this pool by.
    kind: ClassVar[str]
    #: Whether a job may carry a list of payloads, run one after another (a prefork child's
    #: pool: one batch of short tasks stores its results in one backend round trip).
    takes_batches: ClassVar[bool] = False

    def __init__(
        self,
        target: Callable[[Any], Any],
        concurrency: int,
        *,
        max_tasks_per_child: int | None = None,
        initializer: Callable[[], None] | None = None,
    ) -> None:
        check_concurrency(concurrency)
        if max_tasks_per_child is not None and max_tasks_per_child < 1:
            raise ValueError(f"max_tasks_per_child must be >= 1 or None, got {max_tasks_per_child}")
        self.target = target
        self.concurrency = concurrency
        self.max_tasks_per_child = max_tasks_per_child
        self.initializer = initializer
        self._warned: set[str] = set()

    @abstractmethod
    def start(self) -> None:
        """Start the pool's threads or processes; call once, before :meth:`submit`."""

    @abstractmethod
    def submit(self, job: Job, on_done: OnDone) -> None:
        """Start running ``job``; return without waiting for it (solo excepted).

        Raises:
            RuntimeError: no free slot (check :meth:`free_slots` first), or the pool is not
                running.
        """

    @abstractmethod
    def free_slots(self) -> int:
        """Return how many more jobs :meth:`submit` accepts right now (0 once stopping)."""

    @abstractmethod
    def resize(self, concurrency: int) -> None:
        """Change the concurrency; when shrinking, busy workers finish their job first."""

    @abstractmethod
    def stop(self, graceful: bool = True, timeout: float | None = None) -> None:
        """Stop the pool and release its threads or processes; blocks until done.

        Args:
            graceful: Wait for running jobs (up to ``timeout`` seconds) before stopping. When
                ``False``, or when the timeout elapses, running jobs are abandoned (threads)
                and reported through ``on_done`` with kind ``"lost"`` so the caller can
                requeue them.
            timeout: Seconds to wait for running jobs in a graceful stop; ``None`` waits forever.
        """

    @abstractmethod
    def statistics(self) -> PoolStats:
        """Return a snapshot of the pool's state."""

    def terminate(self, job_id: str, signum: int) -> bool:
        """End the running job ``job_id`` with ``signum``; return whether it was ended.

        A thread cannot be killed, so this default logs a warning and returns False:
        the job runs to its end. A prefork node terminates a task by killing the child
        process running it (:mod:`chard.worker.supervisor`), outside any pool.
        """
        logger.warning(
            "the %s pool cannot terminate job %s (a thread cannot be killed); it runs to its "
            "end. Use the prefork pool for terminate=True",
            self.kind,
            job_id,
        )
        return False

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        """Log a WARNING the first time ``key`` comes up, so a busy worker does not flood logs."""
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message, *args)


def call_on_done(on_done: OnDone, outcome: Outcome) -> None:
    """Call ``on_done``, logging what it raises: a callback bug must not kill a pool thread."""
    try:
        on_done(outcome)
    except Exception:
        logger.exception("on_done callback failed for job %s", outcome.job.id)


def check_concurrency(concurrency: int) -> None:
    """Raise ValueError unless ``concurrency`` is a positive integer."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")


def run_target(target: Callable[[Any], Any], job: Job) -> Any:
    """Call ``target(job.payload)``; log and return ``None`` if it raises.

    The target owns error handling (it stores task failures); an exception escaping it is a bug
    in the target, and must not take a worker thread or child process down with it.
    """
    try:
        return target(job.payload)
    except Exception:
        logger.exception("pool target raised for job %s; reporting it done with value None", job.id)
        return None


def _raise_soft_time_limit(signum: int, frame: object) -> None:
    raise SoftTimeLimitExceeded()


def install_soft_limit_handler() -> None:
    """Make SIGALRM raise SoftTimeLimitExceeded; main thread only (a signal-module rule)."""
    signal.signal(signal.SIGALRM, _raise_soft_time_limit)


@contextlib.contextmanager
def soft_time_limit(seconds: float | None) -> Iterator[None]:
    """Arm the real-time interval timer for ``seconds`` around the block, then disarm it.

    Needs :func:`install_soft_limit_handler` to have run in this process. A timer firing between
    the block's end and the disarm raises SoftTimeLimitExceeded out of this context manager;
    callers treat it like any exception escaping the target.
    """
    if not seconds or seconds <= 0:
        yield
        return
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def is_main_thread() -> bool:
    """Return whether the caller runs on the main thread, where signal handlers can be set."""
    return threading.current_thread() is threading.main_thread()
