"""Run one delivered message inside a pool process: decode, build the request, trace.

This is the pool's target. It runs in a prefork child (or a thread), so it takes
plain picklable input (:class:`JobPayload`) and returns a small picklable
:class:`ExecOutcome` telling the consumer how to settle the message. Results and
follow-up messages are written from here, before the consumer acks, so a crash
between the two repeats work instead of losing it (at-least-once).
"""

from __future__ import annotations

import logging
import os
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
from chard.protocol.message import TaskMessage
from chard.task import Context
from chard.trace import trace_task
from chard.worker.pools.base import report_progress

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

    In a batch, the results of plain tasks (nothing sent after them: no callbacks, chain
    or chord) are held and stored together, in one backend round trip, before the pool
    answers and so before the consumer acks; anything else first flushes what is held, so
    stores keep their order. :func:`report_progress` records the index of the running
    message: if the process dies, that one is lost (counted as a death) and the others
    run again uncounted (at-least-once: the ones before it may repeat).
    """
    if not isinstance(payload, list):
        return run_job(payload)
    backend = _app.backend if _app is not None else None
    outcomes: list[ExecOutcome] = []
    held: list[int] = []  # indexes of outcomes whose results are held
    for index, item in enumerate(payload):
        report_progress(index)
        plain = backend is not None and _is_plain(item.message)
        if held and not plain:
            _flush(outcomes, held)
        if plain and backend is not None:
            backend.hold_stores()
            held.append(index)
        outcomes.append(run_job(item))
    if held:
        _flush(outcomes, held)
    return outcomes


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
