"""The prefork node: child processes that each consume, under a parent that supervises.

Why. A message's whole path (fetch, decode, run, store, ack) is Python, and a
process runs Python one thread at a time. When the parent consumed for every child
and handed each message down a pipe, its one interpreter was the node's ceiling:
measured on a drain of no-op tasks, 185 µs of parent CPU per task while the
children sat idle. So each child here is a whole :class:`Consumer`, with its own
broker connection, leases, prefetch window, acker and heartbeat, running its jobs
inline (:class:`ChildPool`); a message crosses no pipe, and the node scales with
its processes.

What the parent still does, never touching a message while all goes well:

* forks the children once the app is loaded, and replaces one that exits
  (``max_tasks_per_child``, a crash), backing off when children die at start;
* enforces hard time limits: a child writes its running job's deadline into its
  :class:`~chard.worker.slot.Slot` and pokes the parent, which kills it when the
  deadline passes;
* follows the revocation log, which the children catch up from before each task,
  and terminates a revoked task by killing the child whose slot says it runs it;
* takes over a dead child's leases at once (:meth:`Broker.take_over`) instead of
  waiting ``lease_timeout`` for them to lapse: the message it was running is settled
  (a death counted against it, its hard time limit, or REVOKED when terminated), the
  others go back to their queue uncounted and run elsewhere within milliseconds;
* resizes the pool at run time (:meth:`Supervisor.resize`, driven by ``--autoscale``
  through :mod:`chard.worker.autoscale`, or by a control command): growing forks more
  children; shrinking retires children warmly, idle ones first, exactly as a child
  retires for ``max_tasks_per_child`` (it finishes its task and returns what it
  prefetched at once; should it die instead, its leases are taken over as above);
* shuts down: warm (SIGTERM to each child: it finishes its task and returns what it
  prefetched) or cold (SIGKILL; all they held goes back to the queue, uncounted).

What runs in a child after the fork is :mod:`chard.worker.child`.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any, Literal

from chard.brokers.base import Delivery
from chard.exceptions import ChardError, WorkerLostError
from chard.protocol.message import TaskMessage, salvage
from chard.worker.child import CHILD_IGNORED, PARENT_SIGNALS, ChildSpec, child_main
from chard.worker.execute import JobPayload
from chard.worker.finished import settle_finished
from chard.worker.held import ConsumerStats
from chard.worker.lost import record_failure, reliably, settle_lost, settle_timeout
from chard.worker.ratelimit import PoolShare
from chard.worker.revocations import Revocations
from chard.worker.slot import STAT_FIELDS, Running, Slot, digest

if TYPE_CHECKING:
    from chard.worker.autoscale import Autoscaler

logger = logging.getLogger("chard.worker")

_FORK = multiprocessing.get_context("fork")

#: Pause before replacing a child that died before it could consume (a failing
#: ``worker_process_init`` handler, a broker it cannot reach): no fork loop.
RESPAWN_BACKOFF = 1.0
#: Why the parent killed a child: its settle of the running message depends on it.
KillReason = Literal["timeout", "cold"]


@dataclass(eq=False)
class _Child:
    process: BaseProcess
    slot: Slot
    index: int
    #: The parent's end of the pipe the child answers remote control on.
    control: Connection
    kill_reason: KillReason | None = None
    #: The task a terminate signal was sent for (the child may outlive a mild signal).
    terminated_task: str | None = None
    #: Sent a warm stop because the pool shrank: not replaced when it exits.
    is_retiring: bool = False

    @property
    def pid(self) -> int:
        assert self.process.pid is not None  # set once started
        return self.process.pid


class Supervisor:
    """Keep ``concurrency`` consumer processes running; see the module docstring."""

    def __init__(self, spec: ChildSpec, concurrency: int) -> None:
        self.spec = spec
        self.app = spec.app
        #: How many children run (not counting retiring ones); see :meth:`resize`.
        self.concurrency = concurrency
        self._wanted = concurrency  # set by resize() from any thread, applied by the loop
        self.stats = ConsumerStats()
        # Shared memory, made in the parent before the fork of the child that uses it (a
        # slot added by a later resize is made before that child's fork too).
        self._slots = [Slot() for _ in range(concurrency)]
        self._children: dict[int, _Child] = {}
        self._lock = threading.Lock()  # the children map: main loop and revocations thread
        self._stopping = threading.Event()
        self._cold = False
        self._signalled: set[str] = set()  # "warm", "cold": what the children were sent
        self._respawn_not_before = 0.0
        self._no_respawn: set[int] = set()  # burst mode: slots whose child drained its queues
        self._wake_r, self._wake_w = os.pipe()  # signal handlers and children poke the loop
        self._life_r, self._life_w = os.pipe()  # children read EOF once the parent is gone
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        self.revocations = Revocations(
            self.app, self._terminate, self._stopping, hostname=spec.hostname
        )
        self._warned_take_over = False
        #: Resizes the pool by demand while the node runs (``--autoscale``); set before run().
        self.autoscaler: Autoscaler | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    def run(self) -> ConsumerStats:
        """Fork the children and supervise them until they have all stopped."""
        self.revocations.start()  # before the first fork: children start with the record
        if self.autoscaler is not None:
            self.autoscaler.start(self._stopping)
        try:
            self._fill()
            self._loop()
        finally:
            self._stopping.set()
            if self.autoscaler is not None:
                self.autoscaler.join(timeout=5)
            for child in list(self._children.values()):  # only if the loop itself failed
                _kill(child.pid)
                self._reap(child)
            self.revocations.join(timeout=5)
            for fd in (self._wake_r, self._wake_w, self._life_r, self._life_w):
                os.close(fd)
        return self.stats

    def active_count(self) -> int:
        """Return how many children run a task now (for heartbeats; any thread)."""
        with self._lock:
            live = list(self._children.values())
        return sum(1 for child in live if child.slot.running() is not None)

    def processed_count(self) -> int:
        """Return how many tasks the node finished: stopped children's and live ones' (slots)."""
        with self._lock:
            live = list(self._children.values())
        return self.stats.processed + sum(child.slot.done_count for child in live)

    def stop(self, cold: bool = False) -> None:
        """Ask the node to stop, warm or cold; safe to call from a signal handler."""
        self._cold = self._cold or cold
        self._stopping.set()
        self._poke()

    def resize(self, concurrency: int) -> None:
        """Run ``concurrency`` children from now on; safe to call from any thread.

        Growing forks the new children at once. Shrinking retires the surplus warmly,
        idle children first: each finishes its running task and returns what it
        prefetched to the queue (as for ``max_tasks_per_child``). Returns at once; the
        supervising loop applies the change.

        Raises:
            ValueError: ``concurrency`` is below 1.
        """
        if concurrency < 1:
            raise ValueError(f"pool size must be >= 1, got {concurrency}")
        self._wanted = concurrency
        self._poke()

    @property
    def size(self) -> int:
        """The pool size asked for last (the loop may not have applied it yet)."""
        return self._wanted

    def grow(self, n: int = 1) -> None:
        """Add ``n`` children (Celery's ``pool_grow``)."""
        self.resize(self._wanted + n)

    def shrink(self, n: int = 1) -> None:
        """Retire ``n`` children warmly, keeping at least one (Celery's ``pool_shrink``)."""
        self.resize(max(1, self._wanted - n))

    def busy(self) -> int:
        """Count the children running a task now (read from their slots: no system call)."""
        with self._lock:
            live = [c for c in self._children.values() if not c.is_retiring]
        return sum(1 for c in live if c.slot.running() is not None)

    def _poke(self) -> None:
        with contextlib.suppress(BlockingIOError):  # a full pipe wakes the loop anyway
            os.write(self._wake_w, b"\0")

    def _loop(self) -> None:
        while True:
            if self._stopping.is_set():
                self._signal_stop()
            else:
                self._apply_size()
            with self._lock:
                live = list(self._children.values())
            if not live and (self._stopping.is_set() or len(self._no_respawn) >= self.concurrency):
                return
            ready = wait([c.process.sentinel for c in live] + [self._wake_r], self._timeout(live))
            if self._wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._wake_r, 4096):
                        pass
            for child in live:
                if child.process.sentinel in ready:
                    self._reap(child)
            self._enforce_deadlines()
            self._fill()

    def _timeout(self, live: list[_Child]) -> float | None:
        """How long the loop may block: until the nearest deadline or respawn, else forever."""
        deadlines = (c.slot.deadline for c in live if c.kill_reason is None)  # not killed yet
        wake_at = min((d for d in deadlines if d is not None), default=None)
        if self._missing() > 0 and not self._stopping.is_set():
            respawn = self._respawn_not_before
            wake_at = respawn if wake_at is None else min(wake_at, respawn)
        return None if wake_at is None else max(0.0, wake_at - time.monotonic())

    def _signal_stop(self) -> None:
        how = "cold" if self._cold else "warm"
        if how in self._signalled:
            return
        self._signalled.add(how)
        with self._lock:
            live = list(self._children.values())
        for child in live:
            if how == "cold":
                child.kill_reason = "cold"
                _kill(child.pid)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGTERM)

    # -- children -----------------------------------------------------------------------------
    def _apply_size(self) -> None:
        """Take on the size :meth:`resize` asked for: retire the surplus (growing is _fill's)."""
        wanted = self._wanted
        if wanted == self.concurrency:
            return
        logger.info(
            "Pool %s from %d to %d processes",
            _verb(wanted, self.concurrency),
            self.concurrency,
            wanted,
        )
        self.concurrency = wanted
        if isinstance(self.spec.rate_share, PoolShare):
            self.spec.rate_share.resize(wanted)  # the node's rate limits, split anew
        with self._lock:
            active = [c for c in self._children.values() if not c.is_retiring]
        surplus = len(active) - wanted
        if surplus <= 0:
            return
        # Idle children first: a busy one finishes its task before it goes.
        active.sort(key=lambda c: (c.slot.running() is not None, -c.index))
        for child in active[:surplus]:
            child.is_retiring = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGTERM)  # a child's warm stop

    def _missing(self) -> int:
        """Count the children to fork to reach the pool size (burst: drained slots count)."""
        with self._lock:
            active = sum(1 for c in self._children.values() if not c.is_retiring)
        return self.concurrency - active - len(self._no_respawn)

    def _fill(self) -> None:
        if self._stopping.is_set() or time.monotonic() < self._respawn_not_before:
            return
        for _ in range(self._missing()):
            index = next(i for i in range(len(self._slots) + 1) if self._is_free(i))
            if index == len(self._slots):
                self._slots.append(Slot())
            try:
                self._spawn(index)
            except OSError:
                logger.exception("Cannot fork a worker process; retry in %ss", RESPAWN_BACKOFF)
                self._respawn_not_before = time.monotonic() + RESPAWN_BACKOFF
                return

    def _is_free(self, index: int) -> bool:
        return index not in self._children and index not in self._no_respawn

    def _spawn(self, index: int) -> None:
        slot = self._slots[index]
        slot.reset()
        control, child_control = _FORK.Pipe()
        process = _FORK.Process(
            target=child_main,
            args=(self.spec, slot, self.revocations, self._wake_w, self._life_r),
            kwargs={"close": (self._wake_r, self._life_w), "control": (child_control, control)},
            name=f"chard-worker-{index + 1}",
        )
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, PARENT_SIGNALS)
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            child_control.close()  # the child's end: the parent sees EOF when it exits
        with self._lock:
            self._children[index] = _Child(process, slot, index, control)
        logger.debug("started worker process %s", process.pid)

    def _reap(self, child: _Child) -> None:
        """Forget an exited child; settle what it held if it did not stop cleanly."""
        child.process.join()
        code = child.process.exitcode
        with self._lock:
            self._children.pop(child.index, None)
        self._add_stats(child.slot.stats())
        if code == 0 and child.kill_reason is None:  # a clean stop settles everything itself
            retired = child.slot.retired
            if child.is_retiring:
                logger.info("Worker process %d retired (the pool shrank)", child.pid)
            elif retired == "max_tasks":
                logger.info("Worker process %d ran its max tasks; replacing it", child.pid)
            elif retired == "memory":
                logger.info("Worker process %d went over its memory limit; replaced", child.pid)
            elif self.spec.burst:
                self._no_respawn.add(child.index)
            elif not self._stopping.is_set():
                logger.warning("Worker process %d stopped unexpectedly; replacing it", child.pid)
            child.process.close()
            return
        running = child.slot.running()
        if not child.slot.consumer_id and not self._stopping.is_set():
            logger.error("Worker process %d exited (code %s) while starting", child.pid, code)
            self._respawn_not_before = time.monotonic() + RESPAWN_BACKOFF
        self._recover(child, running, code)
        child.process.close()

    def control_links(self) -> list[tuple[Connection, int]]:
        """Return each live child's remote control pipe and pid (see :mod:`.process_control`)."""
        with self._lock:
            return [(c.control, c.pid) for c in self._children.values()]

    def _add_stats(self, values: dict[str, int]) -> None:
        for name in STAT_FIELDS:
            setattr(self.stats, name, getattr(self.stats, name) + values[name])

    # -- a dead child's messages --------------------------------------------------------------
    def _recover(self, child: _Child, running: Running | None, code: int | None) -> None:
        """Take over the dead child's leases: settle its running message, return the rest."""
        deliveries = self._take_over(child.slot.consumer_id)
        if deliveries is None:
            # The broker gives the dead child's messages back itself (RabbitMQ does when the
            # child's connection closes), counting the death against the running one only;
            # a message acked on start is gone, so its end is recorded here.
            if running is not None and self._acks_late(running.name):
                self._reliably(self.app.broker.note_lost, running.task_id)
            elif running is not None:
                self._settle_running(
                    child, running, code, None, self._acked_message(child, running)
                )
            return
        # Finished, only the ack not sent: ack them (storing the results it held) first.
        deliveries = settle_finished(
            self.app, child.slot.finished(), deliveries, give_up=self._is_cold
        )
        settled = False
        for delivery in deliveries:
            is_running = running is not None and digest(delivery.body) == running.key
            if not is_running:  # leased ahead, never started (or not yet acked): run it again
                self._reliably(delivery.reject, True)
                continue
            assert running is not None
            message = self._decode(delivery)
            if message is None:  # it killed the child and cannot be read: never again
                self._set_aside(delivery, running, code)
            else:
                self._settle_running(child, running, code, delivery, message)
            settled = True
        if running is not None and not settled:  # acked on start (acks_late=False)
            self._settle_running(child, running, code, None, self._acked_message(child, running))
        returned = len(deliveries) - settled
        if returned:
            logger.info(
                "Returned %d message(s) held by worker process %d to the queue", returned, child.pid
            )

    def _take_over(self, consumer_id: str) -> list[Delivery] | None:
        """The dead child's deliveries, now ours; None if the broker cannot take them over."""
        if not consumer_id:
            return []  # it died before its first fetch: it held nothing
        try:
            taken: list[Delivery] = reliably(
                self.app.broker.take_over, consumer_id, give_up=lambda: False
            )
            return taken
        except NotImplementedError as exc:
            if not self._warned_take_over:
                self._warned_take_over = True
                logger.warning("%s", exc)
            return None

    def _acks_late(self, task_name: str) -> bool:
        """Whether ``task_name`` is acked after it runs (so its message outlives a death)."""
        task = self.app.tasks.get(task_name)
        if task is None:
            return bool(self.app.conf.task_acks_late)
        return bool(task.option("acks_late"))

    def _decode(self, delivery: Delivery) -> TaskMessage | None:
        try:
            return TaskMessage.from_wire(delivery.body, self.app.accept_content)
        except ChardError:
            return None

    def _acked_message(self, child: _Child, running: Running) -> TaskMessage:
        """The message a child acked on start: kept in its slot if it is in a workflow."""
        body = child.slot.running_body()
        if body is not None:
            with contextlib.suppress(ChardError):
                return TaskMessage.from_wire(body, self.app.accept_content)
        return TaskMessage(running.name, running.task_id, ignore_result=not running.stores_result)

    def _set_aside(self, delivery: Delivery, running: Running, code: int | None) -> None:
        """Dead-letter a message its child died on and that cannot be decoded here either.

        Returning it uncounted would kill a child per delivery forever; it is FAILURE
        with what can still be read of it, and kept in the dead-letter store.
        """
        self.stats.processed += 1
        self.stats.dead_lettered += 1
        reason = f"worker process exited (exit code {code}) on an undecodable message"
        logger.error("Task %s[%s]: %s; set aside", running.name, running.task_id, reason)
        message = salvage(delivery.body, self.app.accept_content)
        if message is not None:
            record_failure(self.app, message, WorkerLostError(reason), queue=delivery.queue)
        self._reliably(delivery.dead_letter, reason)

    def _settle_running(
        self,
        child: _Child,
        running: Running,
        code: int | None,
        delivery: Delivery | None,
        message: TaskMessage,
    ) -> None:
        """Settle the message the child was running when it died (``delivery`` None: acked)."""
        if child.kill_reason == "cold":  # we abandoned it ourselves: back, uncounted
            if delivery is not None:
                self._reliably(delivery.reject, True)
            return
        self.stats.processed += 1
        if child.terminated_task == running.task_id:  # signalled for this very task
            self.stats.revoked += 1
            queue = delivery.queue if delivery is not None else ""
            count = delivery.delivery_count if delivery is not None else 1
            body = delivery.body if delivery is not None else b""
            self.revocations.discard(JobPayload(body, queue, count, message), message, "terminated")
            if delivery is not None:
                self._reliably(delivery.ack)
            return
        self.stats.failed += 1
        if child.kill_reason == "timeout":
            limit = child.slot.limit
            settle_timeout(self.app, delivery, message, limit, give_up=self._is_cold)
        else:
            settle_lost(
                self.app, delivery, message, exitcode=code, pid=child.pid, give_up=self._is_cold
            )

    def _reliably(self, operation: Callable[..., Any], *args: Any) -> None:
        reliably(operation, *args, give_up=self._is_cold)

    def _is_cold(self) -> bool:
        return self._cold

    # -- killing ------------------------------------------------------------------------------
    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        with self._lock:
            live = list(self._children.values())
        for child in live:
            deadline = child.slot.deadline
            if deadline is not None and deadline <= now and child.kill_reason is None:
                child.kill_reason = "timeout"
                _kill(child.pid)

    def _terminate(self, task_id: str, signum: int) -> bool:
        """Kill the child running ``task_id`` (the revocations thread calls this)."""
        with self._lock:
            live = list(self._children.values())
        for child in live:
            running = child.slot.running()
            if running is None or running.task_id != task_id:
                continue
            # SIGTERM is a child's warm stop and SIGINT/SIGQUIT are ignored: those end the
            # task the only sure way. Another signal is sent as asked (the task may catch it).
            sent = signal.SIGKILL if signum in (*CHILD_IGNORED, signal.SIGTERM) else signum
            child.terminated_task = task_id
            logger.info("Sending %s to process %d running %s", _name(sent), child.pid, task_id)
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, sent)
            return True
        return False


def _verb(new: int, old: int) -> str:
    return "grows" if new > old else "shrinks"


def _name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # already exited; its sentinel says so
        os.kill(pid, signal.SIGKILL)
