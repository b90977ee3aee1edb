"""Revoked task ids, worker side: kept in memory, fed by the broker's durable ``revoke`` log.

When the consumer starts, :meth:`Revocations.start` reads the whole ``revoke``
broadcast channel from its start, dropping expired entries, before the first
message is fetched; then a daemon thread blocks on the channel for new entries
(reconnecting with back-off when the broker drops). :meth:`Revocations.is_revoked`
answers from memory: no broker round-trip per task. So a revocation reaches every
worker that runs within its expiry (3 hours), including one started after it was
sent, which Celery's in-memory broadcast cannot do.

What happens to a revoked task (the consumer only calls in here):

* **Not started.** When it is fetched, it is discarded instead of run: REVOKED
  (``TaskRevokedError("revoked")``) is stored unless results are ignored, the
  chain steps after it become REVOKED too, a chord it belongs to fails, the
  ``task_revoked`` signal is sent, and the message is acked. A countdown or ETA
  task is held by the broker, so this happens when it falls due. Expired tasks go
  the same way (``"expired"``).
* **Admitted, not started.** A consumer leases messages ahead of time (its
  prefetch window, run as a batch one message after another), so a revocation
  can come after the check above. The process about to run the message checks
  again just before (:meth:`Revocations.check`). In a prefork node, the parent
  follows the log; a shared counter, bumped by every revocation it takes in,
  tells each child when to read the log's new entries itself, so the check costs
  one shared-memory read per task otherwise, and an idle node reads the log once.
* **Running, with ``terminate=True``.** The ``terminate`` callback ends it: the
  prefork supervisor kills the child running that very task (its slot says
  which, :mod:`chard.worker.slot`), settles it REVOKED (``"terminated"``) and
  acks it: it is not redelivered as a lost task; the child's other leased
  messages run again. If the task finished first, its own outcome stands.
  Threads cannot be killed: that pool logs a warning and the task runs on.
* **Running, without ``terminate``.** It runs to its end, as in Celery.

Memory is bounded: at most :data:`MAX_REVOKED` ids (Celery's 50,000), each
forgotten when its revocation expires.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from chard._utils.clock import Clock, SystemClock
from chard._utils.perprocess import current_pid
from chard.brokers.base import BROADCAST_START
from chard.exceptions import BrokerConnectionError, DecodeError
from chard.execution import outcome
from chard.protocol.control import REVOKE_CHANNEL, Revocation
from chard.protocol.message import TaskMessage
from chard.worker.execute import JobPayload, build_request

if TYPE_CHECKING:
    from chard.app import Celery

logger = logging.getLogger("chard.worker")

#: Most revoked ids kept at once (Celery's ``REVOKES_MAX``); the oldest go first.
MAX_REVOKED = 50_000
#: Longest single blocking read of the channel: how soon the thread sees a stop. An idle
#: worker on Redis pays one XREAD per read; a new revocation wakes the read at once.
READ_TIMEOUT = 2.0
#: Longest pause between two attempts to reach a broker that is down (seconds).
MAX_BACKOFF = 30.0


class Revocations:
    """The revoked task ids this worker knows of; see the module docstring.

    Args:
        app: the worker's app (its broker carries the channel, its backend the states).
        terminate: called with ``(task_id, signum)`` for each revocation with
            ``terminate=True``; ends that task if it runs here, and returns whether it
            did. The consumer asks its pool; the prefork supervisor kills the child.
        stopping: set when the worker stops; ends the reading thread.
        hostname: the node name, for the request of a discarded task.
        clock: the time source for expiry (tests pass a FakeClock).
        max_ids: the most ids kept at once.
    """

    def __init__(
        self,
        app: Celery,
        terminate: Callable[[str, int], bool] | None,
        stopping: threading.Event,
        *,
        hostname: str,
        clock: Clock | None = None,
        max_ids: int = MAX_REVOKED,
    ) -> None:
        self.app = app
        self._terminate = terminate
        self._stopping = stopping
        self.hostname = hostname
        self._clock: Clock = clock or SystemClock()
        self._max_ids = max_ids
        # task id -> (expires, signal to terminate it with or None), oldest first. Written
        # by the reading thread under the lock; read without it (a dict get is atomic).
        self._revoked: dict[str, tuple[float, int | None]] = {}
        self._lock = threading.Lock()
        self._cursor = BROADCAST_START
        self._thread: threading.Thread | None = None
        self._is_caught_up = False  # the log read at start is in: announce what follows
        # Bumped by every batch of new revocations, in memory shared with the prefork
        # children (created before they fork): a child reads the log when it changes.
        self._generation: Any = multiprocessing.RawValue("q", 0)
        self._seen_generation = 0  # in a child: the generation its record is up to date with
        self._pid = os.getpid()

    # -- lifecycle ------------------------------------------------------------
    def start(self) -> None:
        """Read the whole log (retrying until the broker answers, or a stop), then follow it.

        Blocks until the log is read, so that no revoked task runs for want of it.
        """
        if not self._read(0, once=True):
            return
        self._is_caught_up = True
        if self._revoked:
            logger.info("%d revoked task id(s) in force", len(self._revoked))
        self._thread = threading.Thread(
            target=self._read, args=(READ_TIMEOUT,), name="chard-revocations", daemon=True
        )
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the reading thread to end (after ``stopping`` is set)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def _read(self, timeout: float, once: bool = False) -> bool:
        """Poll the log until a stop (``once``: until one poll worked); False if it never did.

        Never raises: a broker that is down is retried with back-off, like the fetcher.
        """
        pause, failing = 1.0, False
        while not self._stopping.is_set():
            try:
                self.poll(timeout)
            except NotImplementedError as exc:
                logger.warning("Revocations are off: %s", exc)
                return False
            except Exception as exc:  # the broker is down, mostly: never end the thread
                level = logging.WARNING if isinstance(exc, BrokerConnectionError) else logging.ERROR
                logger.log(level, "Cannot read revocations: %s; retrying in %.0fs", exc, pause)
                failing = True
                self._stopping.wait(pause)
                pause = min(pause * 2, MAX_BACKOFF)
                continue
            if failing:
                logger.warning("Reading revocations again")
                pause, failing = 1.0, False
            if once:
                return True
        return False

    def poll(self, timeout: float) -> int:
        """Read what the log holds after the last entry seen (waiting up to ``timeout``).

        Returns how many entries were read. Terminates the running tasks they name
        with ``terminate=True``.
        """
        entries = self.app.broker.broadcast_read(REVOKE_CHANNEL, self._cursor, timeout)
        if entries:
            self.apply(entry for _, entry in entries)
            self._cursor = entries[-1][0]
        return len(entries)

    # -- the record -----------------------------------------------------------
    def apply(self, payloads: Iterable[bytes]) -> None:
        """Take in revocation payloads: remember their ids, terminate running ones."""
        with self._lock:
            to_terminate = self._absorb(payloads, announce=self._is_caught_up)
        self._generation.value += 1  # prefork children: read the log before the next task
        for task_id, signum in to_terminate:
            self._terminate_if_running(task_id, signum)

    def _absorb(self, payloads: Iterable[bytes], announce: bool) -> list[tuple[str, int]]:
        """Add the ids of unexpired revocations; return those to terminate (lock held)."""
        now = self._clock.time()
        to_terminate: list[tuple[str, int]] = []
        for payload in payloads:
            try:
                revocation = Revocation.from_payload(payload)
            except DecodeError as exc:
                logger.warning("Ignoring a malformed revocation: %s", exc)
                continue
            if revocation.is_expired(now):
                continue
            signum = revocation.signum if revocation.terminate else None
            if announce:
                logger.info("Tasks flagged as revoked: %s", _shorten(revocation.ids))
            for task_id in revocation.ids:
                _, before = self._revoked.pop(task_id, (0.0, None))
                self._revoked[task_id] = (revocation.expires, signum or before)
                if signum is not None:
                    to_terminate.append((task_id, signum))
        self._forget_old(now)
        return to_terminate

    def _forget_old(self, now: float) -> None:
        """Drop expired ids from the front, then the oldest beyond ``max_ids``."""
        expired = []
        for task_id, (expires, _) in self._revoked.items():
            if expires > now:
                break  # kept in arrival order, which is expiry order give or take clock skew
            expired.append(task_id)
        for task_id in expired:
            del self._revoked[task_id]
        excess = len(self._revoked) - self._max_ids
        if excess > 0:
            for task_id in list(self._revoked)[:excess]:
                del self._revoked[task_id]
            logger.warning(
                "Forgot %d unexpired revocation(s): more than %d revoked task ids at once",
                excess,
                self._max_ids,
            )

    def __len__(self) -> int:
        """Return how many revoked ids are kept (expired ones linger until the next entry)."""
        return len(self._revoked)

    def ids(self) -> list[str]:
        """Return the revoked ids in force, oldest first (``inspect revoked``)."""
        now = self._clock.time()
        with self._lock:
            return [task_id for task_id, (expires, _) in self._revoked.items() if expires > now]

    def is_revoked(self, task_id: str) -> bool:
        """Return whether ``task_id`` is revoked (from memory; the hot path calls this)."""
        entry = self._revoked.get(task_id)
        return entry is not None and entry[0] > self._clock.time()

    def is_terminated(self, task_id: str) -> bool:
        """Return whether ``task_id`` was revoked with ``terminate=True``."""
        entry = self._revoked.get(task_id)
        return entry is not None and entry[1] is not None

    def _terminate_if_running(self, task_id: str, signum: int) -> None:
        if self._terminate is None:
            return
        logger.info("Terminating revoked task %s (%s)", task_id, signal.Signals(signum).name)
        if not self._terminate(task_id, signum):
            logger.info("Task %s is not running here; it will be discarded instead", task_id)

    # -- in the pool process --------------------------------------------------
    def check(self, payload: JobPayload, message: TaskMessage) -> bool:
        """Just before ``message`` runs: discard it and return True if it was revoked.

        Called by the pool target in whichever process runs the task. In a prefork
        child, the record inherited at fork is brought up to date from the log when
        the worker has taken in revocations since (the shared generation counter).
        """
        if current_pid() != self._pid:  # (os.getpid() is a system call, once per task here)
            self._catch_up_in_child()
        if not self.is_revoked(message.id):
            return False
        self.discard(payload, message, "revoked")
        return True

    def _catch_up_in_child(self) -> None:
        generation = self._generation.value
        if generation == self._seen_generation:
            return
        try:
            entries = self.app.broker.broadcast_read(REVOKE_CHANNEL, self._cursor, 0)
        except Exception as exc:  # the broker is down: run it, as if the revocation came late
            logger.warning("Cannot read revocations before running a task: %s", exc)
            return
        # The child is single-threaded here, and the lock may have been held at fork time.
        self._absorb((payload for _, payload in entries), announce=False)
        if entries:
            self._cursor = entries[-1][0]
        self._seen_generation = generation

    # -- discarding -----------------------------------------------------------
    def discard(self, payload: JobPayload, message: TaskMessage, reason: str) -> None:
        """Record that ``message``'s task will not run (or ran no further): REVOKED.

        ``reason`` is ``"revoked"``, ``"expired"`` or ``"terminated"``, stored as the
        :class:`~chard.exceptions.TaskRevokedError` (Celery's reasons). The caller
        acks the message. Runs in the worker process, or in a pool process. Never
        raises: a store the backend refuses is logged.
        """
        name, task_id = message.task, message.id
        if reason == "expired":
            logger.info("Task %s[%s] expired; not run (REVOKED)", name, task_id)
        elif reason == "terminated":
            logger.info("Task %s[%s] terminated (REVOKED)", name, task_id)
        else:
            logger.info("Discarding revoked task %s[%s]", name, task_id)
        app = self.app
        request = build_request(message, payload, self.hostname)
        task = app.tasks.get(name)
        entry = self._revoked.get(task_id)
        try:
            outcome.revoked(
                app,
                task,
                request,
                reason,
                store=outcome.stores_result(app, task, request),
                name=name,
                signum=entry[1] if entry is not None else None,
            )
        except Exception as exc:  # the backend refused the store: the loop must go on
            logger.exception(
                "Task %s[%s] %s, and recording it failed: %r", name, task_id, reason, exc
            )


def _shorten(ids: Sequence[str], most: int = 10) -> str:
    """Return ``ids`` for a log line: the first ``most`` of them, then how many more."""
    shown = ", ".join(ids[:most])
    return shown if len(ids) <= most else f"{shown} (and {len(ids) - most} more)"
