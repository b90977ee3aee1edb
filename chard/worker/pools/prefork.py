"""The prefork pool: N forked child processes, one job at a time each.

Why processes: CPU-bound tasks run in parallel despite the GIL, a task that crashes or leaks
cannot take the worker down, and a hard time limit can be enforced by killing the child.

How it works. Children are forked (the app is loaded before fork, so they inherit it) and each
gets its own duplex pipe. The parent hands a job to an idle child with one pipe send; the child
runs ``target(payload)`` and answers with one send of the return value. One supervisor thread in
the parent blocks on every pipe and process sentinel at once (an epoll selector, which is what
:func:`multiprocessing.connection.wait` uses, kept registered across calls), with a timeout equal
to the nearest hard deadline: an idle pool costs no CPU, and nothing polls.

Batches (:attr:`takes_batches`): a job's payload may be a list that the target runs one item
after another (the consumer sends runs of short tasks this way: one pipe write and one answer
for many). The target records the index of the running item with
:func:`~chard.worker.pools.base.report_progress`, a store into a shared integer per child,
and a lost job's :attr:`Outcome.progress` carries it, so the caller knows which item killed
the child.

Queueing ahead (``queue_ahead=k``, the worker's default when its prefetch multiplier is above
1): a busy child may also hold up to ``k`` small jobs in its pipe, which it starts the moment
the current one ends, without waiting for the parent to notice. On a deep queue of short tasks
this keeps every child busy (measured: the children sat idle ~80% of a drain without it, waiting
for the parent's round trip). The price is Celery's old non-fair prefork trade-off: a queued job
waits behind its child's current one even if another child frees up first, so a worker with long
tasks should run with ``worker_prefetch_multiplier=1`` (which turns it off), as Celery's docs
advise. Each job's hard time limit counts from when its child starts it (the answer to the job
before it), and a queued job whose child dies before starting it is reported ``unstarted``, to
be run again uncounted. Jobs bigger than :data:`AHEAD_MAX_BYTES` are only sent to idle children
(a pipe write to a busy child must never block).

Children ignore SIGINT and SIGTERM (the parent owns shutdown), reset the other signals the parent
may handle, raise :class:`~chard.exceptions.SoftTimeLimitExceeded` from SIGALRM, and exit after
``max_tasks_per_child`` jobs. A child that dies mid-job is reported ``lost``; one past its hard
time limit is SIGKILLed and reported ``timeout``. Either way a replacement is forked.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import multiprocessing
import os
import selectors
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.reduction import ForkingPickler
from typing import Any, Literal

from chard.exceptions import SoftTimeLimitExceeded
from chard.worker.pools.base import (
    Job,
    OnDone,
    Outcome,
    OutcomeKind,
    Pool,
    PoolStats,
    call_on_done,
    check_concurrency,
    install_soft_limit_handler,
    run_target,
    set_progress_counter,
    soft_time_limit,
)

logger = logging.getLogger(__name__)

_FORK = multiprocessing.get_context("fork")

#: Pause before replacing a child that died before taking any job (typically a failing
#: initializer); without it the pool would fork in a tight loop.
RESPAWN_BACKOFF = 1.0
#: Seconds stop() gives a child to exit (after being told to, or after SIGKILL) before giving up.
EXIT_TIMEOUT = 5.0
#: Largest pickled job queued behind a busy child: well under a pipe's 64 KiB buffer, so the
#: write completes while the child is still busy.
AHEAD_MAX_BYTES = 16 * 1024

#: Signals the parent may handle (Ctrl-C, warm/cold shutdown, reload) that a child must not
#: handle the parent's way. They stay blocked across fork until the child has reset them.
_PARENT_SIGNALS = {
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGCHLD,
}

#: Ctrl-C and a process-group SIGTERM (docker stop, systemd) reach every process; only the
#: parent acts on them, so a warm shutdown lets running tasks finish instead of killing them.
_CHILD_IGNORED = {signal.SIGINT, signal.SIGTERM}

_State = Literal["new", "running", "stopping", "closing", "stopped"]


@dataclass(frozen=True, slots=True)
class _Entry:
    """A submitted job with its callback and pickled form."""

    job: Job
    on_done: OnDone
    data: memoryview


@dataclass(eq=False)
class _Child:
    """The parent's record of one child process."""

    process: BaseProcess
    conn: Connection
    pid: int
    progress: Any  # shared int: how far the running job got (see report_progress)
    #: Jobs sent and not yet answered: the first is running, the others wait in the pipe.
    entries: deque[_Entry] = field(default_factory=deque)
    deadline: float | None = None  # time.monotonic() of the running job's hard time limit
    sent: int = 0  # jobs handed to this child
    is_retiring: bool = False  # takes no new job; exits after the current one
    is_registered: bool = False  # its pipe and sentinel are in the supervisor's selector
    is_killed: bool = False  # SIGKILLed for its hard time limit
    is_terminated: bool = False  # signalled by terminate() during its current job
    is_reaped: bool = False

    @property
    def job(self) -> Job | None:
        """The job the child is running, if any."""
        return self.entries[0].job if self.entries else None


class PreforkPool(Pool):
    """Run jobs in ``concurrency`` forked child processes; see the module docstring."""

    kind = "prefork"
    takes_batches = True

    def __init__(
        self,
        target: Callable[[Any], Any],
        concurrency: int,
        *,
        max_tasks_per_child: int | None = None,
        initializer: Callable[[], None] | None = None,
        queue_ahead: int = 0,
    ) -> None:
        super().__init__(
            target, concurrency, max_tasks_per_child=max_tasks_per_child, initializer=initializer
        )
        if queue_ahead < 0:
            raise ValueError(f"queue_ahead must be >= 0, got {queue_ahead}")
        self.queue_ahead = queue_ahead
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # notified after every supervisor round
        self._state: _State = "new"
        self._children: dict[int, _Child] = {}
        self._waiting: deque[_Entry] = deque()  # accepted, too big to queue behind a busy child
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._next_wakeup = math.inf  # when the supervisor will wake on its own
        self._respawn_not_before = 0.0
        self._processed = 0
        self._reports: list[tuple[OnDone, Outcome]] = []  # delivered once the lock is released
        self._supervisor = threading.Thread(
            target=self._supervise, name="chard-prefork-supervisor", daemon=True
        )

    def start(self) -> None:
        """Fork the children and start the supervisor thread."""
        with self._lock:
            if self._state != "new":
                raise RuntimeError(f"prefork pool cannot start in state {self._state!r}")
            self._state = "running"
            self._fill()
        self._supervisor.start()
        # The supervisor is a daemon thread, so an unstopped pool must still not leave children
        # behind at interpreter exit.
        atexit.register(self._stop_at_exit)

    # -- the hot path -------------------------------------------------------------------------

    def submit(self, job: Job, on_done: OnDone) -> None:
        """Send ``job`` to an idle child (or queue it behind a busy one; see the module docstring).

        Returns once the job is written to the child's pipe, or, for a job too big to queue
        behind a busy child, once it waits in the pool for the first child to free up (it
        still used a slot that :meth:`free_slots` offered).
        """
        data = ForkingPickler.dumps((job.id, job.payload, job.soft_time_limit))
        entry = _Entry(job, on_done, data)
        with self._lock:
            child = self._child_for(entry)
            if child is None:
                if self._free_slots() <= 0:
                    raise RuntimeError(f"prefork pool has no free slot for job {job.id!r}")
                self._waiting.append(entry)
                return
            should_wake = self._send(child, entry)
        if should_wake:
            self._wake()

    def _place_waiting(self) -> None:
        """Send waiting jobs to children that can take them now (lock held)."""
        while self._waiting:
            child = self._child_for(self._waiting[0])
            if child is None:
                return
            self._send(child, self._waiting.popleft())

    def _send(self, child: _Child, entry: _Entry) -> bool:
        """Write ``entry`` to ``child`` (lock held); True if the supervisor must re-plan."""
        child.entries.append(entry)
        child.sent += 1
        if self.max_tasks_per_child is not None and child.sent >= self.max_tasks_per_child:
            child.is_retiring = True  # it exits by itself after this job
        should_wake = len(child.entries) == 1 and self._start_clock(child)
        try:
            # Sent under the lock: the reaper may close this pipe the moment the lock is free.
            child.conn.send_bytes(entry.data)
        except OSError as exc:  # the child just died; the supervisor reports the job lost
            logger.debug("sending job %s to child %d failed: %r", entry.job.id, child.pid, exc)
        return should_wake

    def _start_clock(self, child: _Child) -> bool:
        """Start the hard time limit of the child's running job; True if it is the nearest."""
        limit = child.entries[0].job.time_limit if child.entries else None
        if limit is None:
            child.deadline = None
            return False
        child.deadline = time.monotonic() + limit
        return child.deadline < self._next_wakeup

    def _child_for(self, entry: _Entry) -> _Child | None:
        """Pick the child to run ``entry``: an idle one first, else one with room to queue."""
        if self._state != "running":
            return None
        busy, idle, roomy = 0, None, None
        for child in self._children.values():
            if child.entries:
                busy += 1
                if (
                    roomy is None
                    and not child.is_retiring
                    and len(child.entries) <= self.queue_ahead
                    and len(entry.data) <= AHEAD_MAX_BYTES
                ):
                    roomy = child
            elif idle is None and not child.is_retiring:
                idle = child
        if idle is not None and busy < self.concurrency:
            return idle
        return roomy

    def free_slots(self) -> int:
        """Return how many jobs may be submitted now: idle children plus room to queue ahead."""
        with self._lock:
            return self._free_slots()

    def _free_slots(self) -> int:
        if self._state != "running":
            return 0
        active = [c for c in self._children.values() if not c.is_retiring]
        busy = sum(bool(c.entries) for c in self._children.values())
        idle = sum(not c.entries for c in active)
        room = sum(max(0, 1 + self.queue_ahead - len(c.entries)) for c in active if c.entries)
        return max(0, min(idle, self.concurrency - busy) + room - len(self._waiting))

    # -- the supervisor -----------------------------------------------------------------------

    def _supervise(self) -> None:
        while True:
            with self._lock:
                if self._state == "closing":
                    return
                timeout = self._prepare_wait()
            events = self._selector.select(timeout)
            with self._lock:
                exited = []
                for key, _ in events:
                    if key.fileobj == self._wake_r:
                        self._drain_wake()
                    elif key.data[1] == "result":
                        self._receive(key.data[0])
                    else:
                        exited.append(key.data[0])
                for child in exited:  # after the results: a child may answer, then exit
                    self._reap(child)
                self._enforce_deadlines()
                self._fill()
                self._place_waiting()
                self._changed.notify_all()
                reports, self._reports = self._reports, []
            for on_done, outcome in reports:
                call_on_done(on_done, outcome)

    def _prepare_wait(self) -> float | None:
        """Register new children and return how long the supervisor may block."""
        wake_at = math.inf
        for child in self._children.values():
            if not child.is_registered:
                self._selector.register(child.conn, selectors.EVENT_READ, (child, "result"))
                sentinel = child.process.sentinel
                self._selector.register(sentinel, selectors.EVENT_READ, (child, "exit"))
                child.is_registered = True
            if child.deadline is not None:
                wake_at = min(wake_at, child.deadline)
        if self._occupied() < self.concurrency and self._state == "running":
            wake_at = min(wake_at, self._respawn_not_before)
        self._next_wakeup = wake_at
        return None if wake_at == math.inf else max(0.0, wake_at - time.monotonic())

    def _receive(self, child: _Child) -> None:
        try:
            value = child.conn.recv()
        except (EOFError, OSError):  # the child is gone; its sentinel may not be ready yet
            self._reap(child)
            return
        except Exception:  # the message was read whole, so the pipe is still in sync
            logger.exception("cannot unpickle the result of a job from child %d", child.pid)
            value = None
        self._finish(child, "done", value)
        self._start_clock(child)  # the next queued job, if any, starts now
        if child.is_retiring and not child.entries and child.sent != self.max_tasks_per_child:
            self._send_exit(child)  # retired by resize(); a max-tasks child exits by itself

    def _finish(self, child: _Child, kind: OutcomeKind, value: Any, rc: int | None = None) -> None:
        """Report the child's running job (the oldest unanswered one)."""
        child.deadline = None
        child.is_terminated = False  # a terminate() was for this job; the next one is innocent
        if not child.entries:
            logger.warning("child %d sent a result with no job assigned; ignoring it", child.pid)
            return
        entry = child.entries.popleft()
        self._processed += 1
        progress = child.progress.value if kind in ("lost", "timeout") else None
        outcome = Outcome(entry.job, kind, value, exitcode=rc, pid=child.pid, progress=progress)
        self._reports.append((entry.on_done, outcome))

    def _reap(self, child: _Child) -> None:
        """Forget an exited child, reporting its job as done, lost or timed out."""
        if child.is_reaped:
            return
        child.is_reaped = True
        if child.is_registered:
            self._selector.unregister(child.conn)
            self._selector.unregister(child.process.sentinel)
        while child.entries and child.conn.poll():
            with contextlib.suppress(EOFError, OSError):  # it answered just before it exited
                self._finish(child, "done", child.conn.recv())
                continue
            break
        child.process.join(EXIT_TIMEOUT)
        if child.process.exitcode is None:
            _kill(child)
            child.process.join(EXIT_TIMEOUT)
        code = child.process.exitcode
        child.conn.close()
        if code is None:  # stuck in the kernel (D state); nothing more can be done
            logger.error("child %d did not exit after SIGKILL; leaving it behind", child.pid)
        else:
            child.process.close()
        del self._children[child.pid]
        if child.job is not None:
            kind: OutcomeKind = "timeout" if child.is_killed else "lost"
            log = logger.info if child.is_terminated else logger.error  # asked for, or a crash
            log("child %d exited (code %s) running job %s", child.pid, code, child.job.id)
            self._finish(child, kind, None, code)
            while child.entries:  # queued behind it, never started
                self._finish(child, "unstarted", None, code)
        elif not child.is_retiring and self._state == "running":
            logger.warning("idle child %d exited unexpectedly (exit code %s)", child.pid, code)
            if child.sent == 0:
                self._respawn_not_before = time.monotonic() + RESPAWN_BACKOFF

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        for child in self._children.values():
            if child.deadline is not None and child.deadline <= now and child.job is not None:
                limit = child.job.time_limit
                logger.error("job %s hit its hard time limit (%ss); killing", child.job.id, limit)
                child.deadline = None
                child.is_killed = True
                _kill(child)

    # -- children -----------------------------------------------------------------------------

    def _occupied(self) -> int:
        """Count the slots in use: children that take jobs, plus retiring ones still busy."""
        return sum(not c.is_retiring or c.job is not None for c in self._children.values())

    def _fill(self) -> None:
        """Fork children until the concurrency is met (not while backing off or stopping)."""
        if self._state != "running" or time.monotonic() < self._respawn_not_before:
            return
        for _ in range(self.concurrency - self._occupied()):
            try:
                self._spawn()
            except OSError:
                logger.exception("cannot fork a pool child; retrying in %ss", RESPAWN_BACKOFF)
                self._respawn_not_before = time.monotonic() + RESPAWN_BACKOFF
                return

    def _spawn(self) -> None:
        parent_conn, child_conn = _FORK.Pipe(duplex=True)
        progress = _FORK.RawValue("q", 0)
        # The child closes every parent-side pipe end it inherits, so that each child sees EOF
        # and exits if the parent dies.
        inherited = [c.conn for c in self._children.values()] + [parent_conn]
        process = _FORK.Process(
            target=_child_main,
            args=(
                child_conn,
                inherited,
                self.target,
                self.initializer,
                self.max_tasks_per_child,
                progress,
            ),
            name="chard-prefork-child",
        )
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _PARENT_SIGNALS)
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        child_conn.close()
        assert process.pid is not None  # set by start()
        self._children[process.pid] = _Child(process, parent_conn, process.pid, progress)
        if threading.current_thread() is not self._supervisor:
            self._wake()  # the supervisor must start watching the new child
        logger.debug("started pool child %d", process.pid)

    def _send_exit(self, child: _Child) -> None:
        with contextlib.suppress(OSError):  # already gone; the supervisor reaps it
            child.conn.send(None)

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # a full pipe wakes the supervisor anyway
            os.write(self._wake_w, b"\0")

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 4096):
                pass

    # -- control ------------------------------------------------------------------------------

    def resize(self, concurrency: int) -> None:
        """Fork children now, or retire surplus ones: idle first, busy after their job."""
        check_concurrency(concurrency)
        with self._lock:
            self.concurrency = concurrency
            if self._state != "running":
                return
            active = [c for c in self._children.values() if not c.is_retiring]
            active.sort(key=lambda c: c.job is not None)  # idle children go first
            for child in active[: max(0, len(active) - concurrency)]:
                child.is_retiring = True
                if child.job is None:
                    self._send_exit(child)
            self._fill()

    def terminate(self, job_id: str, signum: int, item: int | None = None) -> bool:
        """Signal the child running ``job_id``; see :meth:`Pool.terminate`.

        SIGTERM and SIGINT go out as SIGKILL: children ignore those two, so that a
        SIGTERM or Ctrl-C reaching the whole process group (docker stop) is a warm
        shutdown of the parent rather than the end of every running task. Little is
        lost: SIGTERM's default action does not run ``finally`` blocks either; only a
        task that installed its own SIGTERM handler would notice.

        A job queued behind the running one is not signalled (False). One race is
        left: a child that has just answered its job and started a queued one, before
        the supervisor read the answer, is signalled during the queued job, which is
        then reported lost and delivered again (counted as a death).
        """
        with self._lock:
            for child in self._children.values():
                if child.job is None or child.job.id != job_id:
                    continue
                if item is not None and child.progress.value != item:
                    return False  # the batch runs another of its messages
                sent = signal.SIGKILL if signum in _CHILD_IGNORED else signum
                logger.info("sending %s to child %d running job %s", _name(sent), child.pid, job_id)
                child.is_terminated = True
                with contextlib.suppress(ProcessLookupError):  # exited; the sentinel reports it
                    os.kill(child.pid, sent)
                return True
        return False

    def stop(self, graceful: bool = True, timeout: float | None = None) -> None:
        """Stop the pool; see :meth:`Pool.stop`.

        Abandoned jobs are reported ``lost`` (exit code ``-9``) from the supervisor thread, before
        this method returns.

        Raises:
            RuntimeError: called from an ``on_done`` callback, which runs on the supervisor thread
                that stop() has to wait for.
        """
        if threading.current_thread() is self._supervisor:
            raise RuntimeError("stop() cannot be called from on_done; call it from another thread")
        with self._lock:
            if self._state == "new":
                self._close_children()  # releases the selector and the wake-up pipe
            if self._state != "running":
                return
            self._state = "stopping"
            for entry in self._waiting:  # never reached a child
                self._reports.append((entry.on_done, Outcome(entry.job, "unstarted")))
            self._waiting.clear()
            self._wake()  # the supervisor delivers those reports
            if graceful:
                self._changed.wait_for(self._is_idle, timeout)
            for child in self._children.values():
                if child.job is not None:
                    logger.warning("abandoning job %s in child %d", child.job.id, child.pid)
                    _kill(child)
            self._changed.wait_for(self._is_idle, EXIT_TIMEOUT)
            self._state = "closing"
            self._wake()
        self._supervisor.join()
        self._close_children()

    def _is_idle(self) -> bool:
        return all(c.job is None for c in self._children.values())

    def _close_children(self) -> None:
        """Tell the remaining children to exit and reap them; only stop() runs this."""
        for child in list(self._children.values()):
            if child.job is None:
                self._send_exit(child)
        for child in list(self._children.values()):
            self._reap(child)  # a stuck child is SIGKILLed after EXIT_TIMEOUT
        for on_done, outcome in self._reports:
            call_on_done(on_done, outcome)
        self._reports.clear()
        self._selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        self._state = "stopped"
        atexit.unregister(self._stop_at_exit)

    def _stop_at_exit(self) -> None:
        self.stop(graceful=False)

    def statistics(self) -> PoolStats:
        """Return a snapshot; ``pids`` holds the live children's process ids."""
        with self._lock:
            busy = sum(c.job is not None for c in self._children.values())
            pids = sorted(self._children)
            return PoolStats(self.kind, self.concurrency, busy, self._processed, pids)


def _name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _kill(child: _Child) -> None:
    with contextlib.suppress(ProcessLookupError):  # already exited; the sentinel reports it
        os.kill(child.pid, signal.SIGKILL)


def _child_main(
    conn: Connection,
    inherited: list[Connection],
    target: Callable[[Any], Any],
    initializer: Callable[[], None] | None,
    max_tasks: int | None,
    progress: Any,
) -> None:
    """Run jobs from ``conn`` until told to stop, the parent goes away, or ``max_tasks``."""
    for other in inherited:
        other.close()
    set_progress_counter(progress)
    for signum in _PARENT_SIGNALS:
        signal.signal(signum, signal.SIG_IGN if signum in _CHILD_IGNORED else signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _PARENT_SIGNALS)
    install_soft_limit_handler()
    if initializer is not None:
        initializer()
    done = 0
    while max_tasks is None or done < max_tasks:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if message is None:
            return
        job_id, payload, soft_limit = message
        job = Job(job_id, payload, soft_limit)
        progress.value = 0
        value: Any = None
        try:
            with soft_time_limit(soft_limit):
                value = run_target(target, job)
        except SoftTimeLimitExceeded:  # fired after the target returned, before the disarm
            logger.debug("soft time limit of job %s fired after it returned", job_id)
        try:
            conn.send(value)
        except (EOFError, OSError):
            return
        except Exception:  # the value cannot be pickled; the target should not return it
            logger.exception("cannot send the result of job %s to the parent", job_id)
            conn.send(None)
        done += 1
