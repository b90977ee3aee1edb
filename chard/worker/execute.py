"""Run delivered messages inside a pool process: build the request, trace, report.

:meth:`Executor.run` is the pool's target, run in a prefork child or a pool thread.
It takes a :class:`JobPayload` (or a batch) and returns a small :class:`ExecOutcome`
telling the consumer how to settle the message. Results and follow-up messages
are written from here, before the consumer acks, so a crash between the two
repeats work instead of losing it (at-least-once). In a prefork child, the task
about to run is written to the child's slot first (:mod:`chard.worker.slot`), so
that if the child dies its supervisor counts the death against that message alone.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from chard import states
from chard._utils.log import saferepr
from chard.exceptions import BackendConnectionError, BackendError, NotRegistered
from chard.execution import outcome
from chard.execution.trace import TraceResult, trace_task
from chard.protocol.message import TaskMessage
from chard.task import Context
from chard.worker.slot import digest

if TYPE_CHECKING:
    from chard.app import Celery
    from chard.backends.base import ResultBackend
    from chard.events import EventDispatcher
    from chard.worker.slot import Slot

logger = logging.getLogger("chard.worker")

#: Longest run (seconds) of a task whose result may wait for the rest of its batch.
QUICK = 0.001


@dataclass(frozen=True, slots=True)
class JobPayload:
    """What a pool process needs to run one message.

    The consumer has already decoded the envelope to check it, so it passes the
    :class:`TaskMessage` along (pickled: about a third of the cost of decoding the
    envelope again); ``body`` travels for whoever settles the message.
    """

    body: bytes
    queue: str
    delivery_count: int
    message: TaskMessage


#: Checks, just before a message runs, whether it was revoked (and if so discards it).
RevocationCheck = Callable[[JobPayload, TaskMessage], bool]


@dataclass(frozen=True)
class ExecOutcome:
    """How the consumer should settle the message after the run."""

    action: Literal["ack", "requeue", "dead_letter"]
    state: str
    reason: str | None = None


#: The acks a run ends with, made once: an outcome is frozen, and one is made per task.
_ACKS = {
    state: ExecOutcome("ack", state)
    for state in (states.SUCCESS, states.FAILURE, states.RETRY, states.IGNORED, states.REVOKED)
}


def _ack(state: str) -> ExecOutcome:
    """Return the outcome that acks a message whose run ended in ``state``."""
    return _ACKS.get(state) or ExecOutcome("ack", state)


def build_request(message: TaskMessage, payload: JobPayload, hostname: str) -> Context:
    """Return the ``self.request`` context of ``message``."""
    return Context(
        id=message.id,
        args=message.args,
        kwargs=message.kwargs,
        retries=message.retries,
        is_eager=False,
        called_directly=False,
        hostname=hostname,
        delivery_info={
            "exchange": "",
            "routing_key": payload.queue,
            "redelivered": payload.delivery_count > 1,
            "priority": message.priority,
        },
        properties={
            "correlation_id": message.id,
            "reply_to": message.reply_to,
            "priority": message.priority,
            "delivery_mode": 2,
        },
        root_id=message.root_id or message.id,
        parent_id=message.parent_id,
        group=message.group,
        group_index=message.group_index,
        eta=message.eta,
        expires=message.expires,
        origin=message.origin,
        reply_to=message.reply_to,
        timelimit=message.timelimit,
        callbacks=message.callbacks,
        errbacks=message.errbacks,
        chain=message.chain,
        chord=message.chord,
        headers=message.extra_headers,
        ignore_result=message.ignore_result,
        priority=message.priority,
        delivery_count=payload.delivery_count,
    )


class Executor:
    """Runs delivered messages where the pool runs them; :meth:`run` is the pool's target.

    One per process that runs tasks: the worker's (threads, solo) or each prefork
    child's, built before its pool starts and handed to it, so that nothing a run needs
    is a module global (a test, or two workers in one process, each get their own).

    Args:
        app: the worker's app (its tasks, backend and broker).
        hostname: the node name, for ``self.request.hostname`` and STARTED metas.
        revocation_check: asked just before each message runs; True if it discarded the
            message as revoked. The consumer checks when it admits a message, but a
            message may wait in the pool after that (queued in a child, later in a
            batch); this catches the revocations that came meanwhile (see
            :meth:`Revocations.check`). Settable until the pool starts, for a consumer
            that makes its own record.
        slot: a prefork child's shared record (:mod:`chard.worker.slot`), where the task
            about to run is written first, so that if the child dies its supervisor
            counts the death against that message alone; None elsewhere.
    """

    def __init__(
        self,
        app: Celery,
        hostname: str,
        revocation_check: RevocationCheck | None = None,
        *,
        slot: Slot | None = None,
    ) -> None:
        self.app = app
        self.hostname = hostname
        self.revocation_check = revocation_check
        self.slot = slot
        #: The latest runtime of each task name here (first run: unknown, not quick).
        self._runtimes: dict[str, float] = {}
        self._seen = 0  # how many of the backend's held metas are copied to the slot

    def run(self, payload: JobPayload | list[JobPayload]) -> ExecOutcome | list[ExecOutcome]:
        """The pool target: run one message, or a batch of them one after another.

        In a batch, the results of quick plain tasks (nothing sent after them: no callbacks,
        chain or chord; and a task that has so far run in under :data:`QUICK` seconds here)
        are held and stored together, in one backend round trip, before the pool answers and
        so before the consumer acks. Anything else first flushes what is held: stores keep
        their order, and a result never waits long behind a slow neighbour (a task that is
        usually quick and once runs long is the exception: up to a batch of results then
        wait for it).

        In a prefork child, each message's end is written to the slot before the next one
        starts (:meth:`Slot.finish`, :meth:`Slot.hold`: a few stores to shared memory): if
        the process dies, its supervisor stores the held results and acks the finished
        messages, counts a death against the one it was running, and returns the others
        to the queue uncounted. So a crash runs again at most the task that was running.
        """
        if not isinstance(payload, list):
            outcome = self.run_job(payload)
            self._finish(payload, outcome)
            return outcome
        backend = self.app.backend
        outcomes: list[ExecOutcome] = []
        held: list[int] = []  # indexes of outcomes whose results are held
        try:
            for index, item in enumerate(payload):
                name = item.message.task
                hold = backend is not None and self._is_plain(item.message) and self._is_quick(name)
                if held and not hold:
                    self._flush(outcomes, held)
                if hold and backend is not None:
                    backend.hold_stores()
                    held.append(index)
                started = time.perf_counter()
                outcome = self.run_job(item)
                self._runtimes[name] = time.perf_counter() - started
                outcomes.append(outcome)
                if hold and backend is not None:
                    self._hold(item, outcomes, held, backend)
                else:
                    self._finish(item, outcome)
        finally:  # even if something escaped: held results are stored, hold mode ends
            if held:
                self._flush(outcomes, held)
        return outcomes

    def _finish(self, payload: JobPayload, outcome: ExecOutcome) -> None:
        """Tell the slot the message's run is over, and if only its ack is left, which one."""
        if self.slot is not None:
            self.slot.finish(digest(payload.body) if outcome.action == "ack" else None)

    def _hold(
        self,
        payload: JobPayload,
        outcomes: list[ExecOutcome],
        held: list[int],
        backend: ResultBackend,
    ) -> None:
        """Like :meth:`_finish` for a message whose results are held: copy them to the slot.

        What does not fit is stored now, with everything held before it.
        """
        if self.slot is None:
            return
        metas, lines = backend.held_stores(), b""
        if len(metas) > self._seen:  # (none for an ignore_result task)
            lines = b"".join(data + b"\n" for data in metas[self._seen :])
            self._seen = len(metas)
        done = digest(payload.body) if outcomes[-1].action == "ack" else None
        if not self.slot.hold(lines, done):
            self._flush(outcomes, held)
            self._finish(payload, outcomes[-1])

    def _is_quick(self, name: str) -> bool:
        return self._runtimes.get(name, QUICK) < QUICK

    def _is_plain(self, message: TaskMessage) -> bool:
        """Whether ``message``'s stores may wait for the end of its batch.

        Not if anything is sent after it runs (callbacks, chain, chord: they may read its
        result), nor if it tracks STARTED (that state must be visible while it runs).
        """
        if message.callbacks or message.errbacks or message.chain or message.chord:
            return False
        task = self.app.tasks.get(message.task)
        if task is None:
            return False
        return not task.option("track_started")

    def _flush(self, outcomes: list[ExecOutcome], held: list[int]) -> None:
        """Store the held results; if the backend is gone, requeue those messages instead."""
        backend = self.app.backend
        assert backend is not None  # results are held only with a backend
        stored = False
        try:
            backend.flush_stores()
            stored = True
        except BackendError as exc:  # its retry policy spent, or a server-side error
            logger.error(
                "Could not store %d task results; returned to the queue: %s", len(held), exc
            )
            for index in held:
                outcomes[index] = ExecOutcome("requeue", states.REJECTED, str(exc))
        finally:
            held.clear()
            self._seen = 0
            if self.slot is not None:
                self.slot.release(stored)

    def run_job(self, payload: JobPayload) -> ExecOutcome:
        """Run one message; never raises for what the task does (the process must survive)."""
        app, message = self.app, payload.message
        request = build_request(message, payload, self.hostname)
        try:
            task = app.tasks[message.task]
        except NotRegistered as exc:  # the consumer checked; a registry changed since
            store = outcome.stores_result(app, None, request)
            outcome.failed(app, None, request, exc, store=store, name=message.task)
            return ExecOutcome("dead_letter", states.FAILURE, str(exc))
        track = task.option("track_started")
        if self.slot is not None:
            stores = app.backend is not None and not message.ignore_result
            body = payload.body if _in_workflow(message) else None
            self.slot.begin(message.id, message.task, stores, body, digest(payload.body))
        events = app.events.task_dispatcher  # this process's, if it is a worker's
        if events is not None and not events.enabled:
            events = None
        try:
            if self.revocation_check is not None and self.revocation_check(payload, message):
                return _ack(states.REVOKED)
            if events is not None:
                events.send("task-started", uuid=message.id)
            if track and app.backend is not None and not message.ignore_result:
                app.backend.store_result(
                    message.id, {"pid": os.getpid(), "hostname": self.hostname}, states.STARTED
                )
            traced = trace_task(task, request)
        except BackendConnectionError as exc:
            # The backend's own retries are spent (see its retry_policy). Acking would leave
            # the task without a result for good; run it again later instead (at-least-once).
            logger.error(
                "Task %s[%s] could not store its state; returned to the queue: %s",
                message.task,
                message.id,
                exc,
            )
            return ExecOutcome("requeue", states.REJECTED, str(exc))
        except Exception as exc:
            # Not the task's doing (trace_task records those, and guards every hook and
            # follow-up): a backend that refused a store, or a bug here. Set the message
            # aside, so it is neither lost nor run again in a loop; it can be re-driven.
            logger.exception("Task %s[%s]: internal error: %r", message.task, message.id, exc)
            return ExecOutcome("dead_letter", states.FAILURE, f"internal error: {exc!r}")
        _log_outcome(message, traced.state, traced.value, traced.runtime)
        if events is not None:  # the ends (succeeded, failed) are sent by execution.outcome
            _send_not_ended(events, message.id, traced)
        if traced.state == states.REJECTED and traced.requeue:
            return ExecOutcome("requeue", traced.state)
        return _ack(traced.state)


def _log_outcome(message: TaskMessage, state: str, value: Any, runtime: float) -> None:
    if state != states.FAILURE and not logger.isEnabledFor(logging.INFO):
        return  # at WARNING (the default) a success costs no repr and no log record
    name, task_id = message.task, message.id
    if state == states.SUCCESS:
        logger.info("Task %s[%s] succeeded in %.6fs: %s", name, task_id, runtime, saferepr(value))
    elif state == states.FAILURE:
        logger.error(
            "Task %s[%s] raised unexpected: %r",
            name,
            task_id,
            value,
            exc_info=(type(value), value, value.__traceback__)
            if isinstance(value, BaseException)
            else None,
        )
    elif state == states.RETRY:
        logger.info("Task %s[%s] retry: %s", name, task_id, value)
    else:
        logger.info("Task %s[%s] %s", name, task_id, state.lower())


def _send_not_ended(events: EventDispatcher, task_id: str, traced: TraceResult) -> None:
    """Send ``task-retried`` or ``task-rejected`` for a run that did not end its task."""
    if traced.state == states.RETRY:
        events.send(  # its value is the retry's cause (or the Retry itself)
            "task-retried",
            uuid=task_id,
            exception=saferepr(traced.value),
            traceback=traced.traceback,
        )
    elif traced.state == states.REJECTED:
        events.send("task-rejected", uuid=task_id, requeue=traced.requeue)


def _in_workflow(message: TaskMessage) -> bool:
    """Whether anything must happen to others when ``message``'s task ends (see the slot)."""
    return bool(message.chain or message.chord or message.errbacks or message.group)


def is_expired(message: TaskMessage, now: datetime | None = None) -> bool:
    """Return whether ``message`` has an ``expires`` time that has passed."""
    if message.expires is None:
        return False
    expires = message.expires
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=UTC)
    return expires <= (now or datetime.now(UTC))
