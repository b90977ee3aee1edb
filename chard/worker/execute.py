"""Run one delivered message inside a pool process: decode, build the request, trace.

This is the pool's target, run in a prefork child or a pool thread. It takes a
:class:`JobPayload` and returns a small :class:`ExecOutcome` telling the consumer
how to settle the message. Results and follow-up messages are written from here,
before the consumer acks, so a crash between the two repeats work instead of
losing it (at-least-once). In a prefork child, the task about to run is written
to the child's slot first (:mod:`chard.worker.slot`), so that if the child dies
its supervisor counts the death against that message alone.
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
from chard.exceptions import (
    BackendConnectionError,
    BackendError,
    ContentDisallowed,
    DecodeError,
    NotRegistered,
)
from chard.execution.trace import trace_task
from chard.protocol.message import TaskMessage
from chard.task import Context
from chard.worker import slot as slots

if TYPE_CHECKING:
    from chard.app import Celery

logger = logging.getLogger("chard.worker")

_app: Celery | None = None
_hostname = "chard@localhost"
#: Asked just before each message runs: True if it discarded the message as revoked.
_revocation_check: Callable[[JobPayload, TaskMessage], bool] | None = None


@dataclass(frozen=True, slots=True)
class JobPayload:
    """What a pool process needs to run one message.

    The consumer has already decoded the envelope to check it, so it passes the
    :class:`TaskMessage` along (pickled: about a third of the cost of decoding the
    envelope again); ``body`` is decoded only when ``message`` is None.
    """

    body: bytes
    queue: str
    delivery_count: int
    message: TaskMessage | None = None


@dataclass(frozen=True)
class ExecOutcome:
    """How the consumer should settle the message after the run."""

    action: Literal["ack", "requeue", "dead_letter"]
    state: str
    reason: str | None = None


def configure(app: Celery, hostname: str) -> None:
    """Set the app and node name used by :func:`run_job` (before the pool forks)."""
    global _app, _hostname
    _app, _hostname = app, hostname


def set_revocation_check(check: Callable[[JobPayload, TaskMessage], bool] | None) -> None:
    """Set the check :func:`run_job` makes before running a message (before the pool forks).

    The consumer checks for revocations when it admits a message, but a message may
    wait in the pool after that (queued in a child, later in a batch); this catches
    the revocations that came meanwhile (see :meth:`Revocations.check`).
    """
    global _revocation_check
    _revocation_check = check


def configured_hostname() -> str:
    """Return the node name :func:`configure` set (for requests built outside the pool)."""
    return _hostname


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


def run(payload: JobPayload | list[JobPayload]) -> ExecOutcome | list[ExecOutcome]:
    """The pool target: run one message, or a batch of them one after another.

    In a batch, the results of quick plain tasks (nothing sent after them: no callbacks,
    chain or chord; and a task that has so far run in under :data:`QUICK` seconds here)
    are held and stored together, in one backend round trip, before the pool answers and
    so before the consumer acks. Anything else first flushes what is held: stores keep
    their order, and a result never waits long behind a slow neighbour (a task that is
    usually quick and once runs long is the exception: up to a batch of results then
    wait for it). If the process dies, the message it was running is lost (counted as a
    death) and the others of the batch run again uncounted (at-least-once: the ones
    before it may repeat).
    """
    if not isinstance(payload, list):
        return run_job(payload)
    backend = _app.backend if _app is not None else None
    outcomes: list[ExecOutcome] = []
    held: list[int] = []  # indexes of outcomes whose results are held
    for index, item in enumerate(payload):
        name = item.message.task if item.message is not None else ""
        hold = backend is not None and _is_plain(item.message) and _is_quick(name)
        if held and not hold:
            _flush(outcomes, held)
        if hold and backend is not None:
            backend.hold_stores()
            held.append(index)
        started = time.perf_counter()
        outcomes.append(run_job(item))
        _runtimes[name] = time.perf_counter() - started
    if held:
        _flush(outcomes, held)
    return outcomes


#: Longest run (seconds) of a task whose result may wait for the rest of its batch.
QUICK = 0.001
#: The latest runtime of each task name in this process (first run: unknown, not quick).
_runtimes: dict[str, float] = {}


def _is_quick(name: str) -> bool:
    return _runtimes.get(name, QUICK) < QUICK


def _is_plain(message: TaskMessage | None) -> bool:
    """Whether ``message``'s stores may wait for the end of its batch.

    Not if anything is sent after it runs (callbacks, chain, chord: they may read its
    result), nor if it tracks STARTED (that state must be visible while it runs).
    """
    if message is None or _app is None:
        return False
    if message.callbacks or message.errbacks or message.chain or message.chord:
        return False
    task = _app.tasks.get(message.task)
    if task is None:
        return False
    return not task.option("track_started")


def _flush(outcomes: list[ExecOutcome], held: list[int]) -> None:
    """Store the held results; if the backend is gone, requeue those messages instead."""
    assert _app is not None
    assert _app.backend is not None
    try:
        _app.backend.flush_stores()
    except BackendError as exc:  # its retry policy spent, or a server-side error
        logger.error("Could not store %d task results; returned to the queue: %s", len(held), exc)
        for index in held:
            outcomes[index] = ExecOutcome("requeue", states.REJECTED, str(exc))
    held.clear()


def run_job(payload: JobPayload) -> ExecOutcome:
    """Decode and run one message; never raises (the pool process must survive)."""
    app = _app
    if app is None:
        raise RuntimeError("chard.worker.execute.configure() was not called before the pool")
    message = payload.message
    if message is None:
        try:
            message = TaskMessage.from_wire(payload.body, app.accept_content)
        except (DecodeError, ContentDisallowed) as exc:
            return ExecOutcome("dead_letter", states.FAILURE, f"undecodable message: {exc}")
    try:
        task = app.tasks[message.task]
    except NotRegistered as exc:
        return ExecOutcome("dead_letter", states.FAILURE, str(exc))
    request = build_request(message, payload, _hostname)
    track = task.option("track_started")
    slot = slots.current()
    if slot is not None:
        body = payload.body if _in_workflow(message) else None
        slot.begin(
            message.id, message.task, app.backend is not None and not message.ignore_result, body
        )
    try:
        if _revocation_check is not None and _revocation_check(payload, message):
            return ExecOutcome("ack", states.REVOKED)
        if track and app.backend is not None and not message.ignore_result:
            app.backend.store_result(
                message.id, {"pid": os.getpid(), "hostname": _hostname}, states.STARTED
            )
        outcome = trace_task(task, request)
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
    _log_outcome(message, outcome.state, outcome.value, outcome.runtime)
    if outcome.state == states.REJECTED and outcome.requeue:
        return ExecOutcome("requeue", outcome.state)
    return ExecOutcome("ack", outcome.state)


def _in_workflow(message: TaskMessage) -> bool:
    """Whether anything must happen to others when ``message``'s task ends (see the slot)."""
    return bool(message.chain or message.chord or message.errbacks or message.group)


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


def is_expired(message: TaskMessage, now: datetime | None = None) -> bool:
    """Return whether ``message`` has an ``expires`` time that has passed."""
    if message.expires is None:
        return False
    expires = message.expires
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=UTC)
    return expires <= (now or datetime.now(UTC))
