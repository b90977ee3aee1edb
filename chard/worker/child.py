"""A prefork child: a whole consumer in its own process, under a supervising parent.

See :mod:`chard.worker.supervisor` for why each child consumes. This module is what
runs after the fork: the child's signals, its consumer, its inline pool that keeps
the :class:`~chard.worker.slot.Slot` up to date, and the two ways a child retires by
itself to be replaced (``max_tasks_per_child``, ``max_memory_per_child``): a warm stop,
which returns what it prefetched to the queue at once, so retiring costs no lease.

Children ignore SIGINT and SIGQUIT (the parent owns Ctrl-C and cold stops) and take
SIGTERM as a warm stop, so a process-group SIGTERM (docker stop) is a warm shutdown,
and the parent shrinks its pool by sending SIGTERM too. If the parent dies, each
child sees its pipe close and stops warm by itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, ClassVar

from chard.worker.consumer import Consumer
from chard.worker.execute import Executor
from chard.worker.pools.base import Job
from chard.worker.pools.solo import SoloPool
from chard.worker.process_control import ProcessControl, serve_parent
from chard.worker.ratelimit import PoolShare
from chard.worker.revocations import Revocations
from chard.worker.slot import STAT_FIELDS, RetireReason, Slot

if TYPE_CHECKING:
    from chard.app import Celery

logger = logging.getLogger("chard.worker")

#: Signals the parent handles (Ctrl-C, warm and cold stops) that a child must not handle
#: the parent's way; blocked across fork until the child has set its own.
PARENT_SIGNALS = {
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGCHLD,
}
CHILD_IGNORED = {signal.SIGINT, signal.SIGQUIT}


def resident_kib() -> int:
    """Return this process's resident memory in KiB (Celery's unit for the memory limit).

    The current resident set from ``/proc`` where there is one; elsewhere the peak
    (``ru_maxrss``), which can only overstate it, so a child is replaced early, never late.
    """
    try:
        with open("/proc/self/statm", "rb") as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS


class ChildPool(SoloPool):
    """The pool inside a prefork child: jobs run inline, batches allowed, the slot kept.

    Hard time limits are enforced from outside (the supervisor kills the child), so
    none is ignored here; ``terminate`` is the supervisor's too. After each job the
    child checks its limits (tasks run, resident memory) and retires once over one.
    """

    kind = "prefork"
    takes_batches = True
    enforces_hard_limits: ClassVar[bool] = True

    def __init__(
        self,
        target: Callable[[Any], Any],
        slot: Slot,
        poke: Callable[[], None],
        max_tasks: int | None = None,
        max_memory_kib: int | None = None,
    ) -> None:
        super().__init__(target)
        self.slot = slot
        self._poke = poke
        self._max_tasks = max_tasks
        self._max_memory_kib = max_memory_kib
        self._tasks = 0
        #: Called, with the reason, once a limit is reached: the child then stops warm.
        self.on_retire: Callable[[RetireReason], None] | None = None

    def _run(self, job: Job) -> object:
        if job.time_limit:
            self.slot.set_limit(job.time_limit)
            self._poke()  # the parent must learn the new deadline
        try:
            return super()._run(job)
        finally:
            self.slot.end()
            self._tasks += len(job.payload) if isinstance(job.payload, list) else 1
            reason = self._over_limit()
            if reason is not None and self.on_retire is not None:
                self.on_retire(reason)

    def _over_limit(self) -> RetireReason | None:
        if self._max_tasks and self._tasks >= self._max_tasks:
            return "max_tasks"
        if self._max_memory_kib:
            used = resident_kib()
            if used > self._max_memory_kib:
                logger.warning(
                    "Worker process %d uses %d KiB, over max_memory_per_child (%d KiB): "
                    "replacing it after this task",
                    os.getpid(),
                    used,
                    self._max_memory_kib,
                )
                return "memory"
        return None

    def terminate(self, job_id: str, signum: int) -> bool:
        """Decline: the supervisor terminates a task by killing this whole process."""
        return False


@dataclass(frozen=True)
class ChildSpec:
    """What every child consumer is made of (fixed before the first fork)."""

    app: Celery
    #: The node name (``-n``): ``self.request.hostname`` of every task.
    hostname: str
    queues: Sequence[str]
    #: Messages each child leases ahead: the prefetch multiplier (Celery's per-process window).
    prefetch: int
    max_tasks_per_child: int | None
    burst: bool
    initializer: Callable[[], None] | None
    #: Resident memory (KiB) past which a child is replaced after its task.
    max_memory_per_child: int | None = None
    #: Each child's part of a task's rate limit (1 / pool size now): the limit is per node.
    rate_share: PoolShare | float = 1.0


def child_main(
    spec: ChildSpec,
    slot: Slot,
    revocations: Revocations,
    wake_fd: int,
    life_fd: int,
    close: tuple[int, ...] = (),
    control: tuple[Connection, Connection] | None = None,
) -> None:
    """Consume until a warm stop, the parent's death, a retiring limit or (burst) no work."""
    for fd in close:  # the parent's ends: a child must not keep its own pipe alive
        os.close(fd)
    if control is not None:
        control[1].close()
    for signum in PARENT_SIGNALS:
        signal.signal(signum, signal.SIG_IGN if signum in CHILD_IGNORED else signal.SIG_DFL)
    if spec.initializer is not None:
        spec.initializer()
    app = spec.app
    slot.announce(app.broker.consumer_id)  # opens this process's broker: before any lease

    def poke() -> None:
        with contextlib.suppress(OSError):
            os.write(wake_fd, b"\0")

    executor = Executor(app, spec.hostname, revocations.check, slot=slot)
    pool = ChildPool(executor.run, slot, poke, spec.max_tasks_per_child, spec.max_memory_per_child)
    consumer = Consumer(
        app,
        pool,
        spec.queues,
        prefetch=spec.prefetch,
        burst=spec.burst,
        hostname=spec.hostname,
        revocations=revocations,
        rate_share=spec.rate_share,
    )
    if control is not None:

        def running() -> str | None:
            now = slot.running()
            return now.task_id if now is not None else ""

        answers = ProcessControl(consumer, spec.hostname, running)
        threading.Thread(
            target=serve_parent, args=(control[0], answers), name="chard-control", daemon=True
        ).start()

    def retire(reason: RetireReason) -> None:
        slot.mark_retired(reason)
        consumer.stop()

    pool.on_retire = retire
    # The handler only writes a byte: it runs on the main thread between any two
    # bytecodes, possibly while that thread holds the consumer's locks (or is inside
    # stop() for an earlier SIGTERM), so taking them here could deadlock the child.
    stop_r, stop_w = os.pipe()
    signal.signal(signal.SIGTERM, lambda signum, frame: os.write(stop_w, b"t"))
    threading.Thread(
        target=_stop_on_signal, args=(stop_r, consumer), name="chard-sigterm", daemon=True
    ).start()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, PARENT_SIGNALS)
    watcher = threading.Thread(
        target=_watch_parent, args=(life_fd, consumer), name="chard-parent-watch", daemon=True
    )
    watcher.start()
    pool.start()
    stats = consumer.run()
    slot.save_stats({name: getattr(stats, name) for name in STAT_FIELDS})
    if app.events.task_dispatcher is not None:  # inherited, started afresh: flush ours
        app.events.task_dispatcher.close()
    app.close()


def _stop_on_signal(stop_fd: int, consumer: Consumer) -> None:
    """Stop the consumer warm on each SIGTERM byte (see the handler in :func:`child_main`)."""
    with contextlib.suppress(OSError):
        while os.read(stop_fd, 1):
            consumer.stop()


def _watch_parent(life_fd: int, consumer: Consumer) -> None:
    """Stop the consumer warm when the parent is gone (its end of the pipe closed)."""
    with contextlib.suppress(OSError):
        while os.read(life_fd, 1):
            pass
    logger.warning("The worker's main process is gone; stopping after the running task")
    consumer.stop()
