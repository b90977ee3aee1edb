"""Settling a message whose process died, or was killed, while it ran.

Used by the consumer (a thread pool's cold stop) and by the prefork supervisor
(a child that crashed, hit its hard time limit, or was terminated). Also home to
:func:`reliably`, the retry loop every broker call that settles a message goes
through, so that a Redis restart never turns finished work into repeated work.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from chard.brokers.base import Delivery, OutgoingMessage
from chard.exceptions import BrokerConnectionError, TimeLimitExceeded, WorkerLostError
from chard.execution import outcome
from chard.protocol.message import LOST_HEADER, TaskMessage, with_header
from chard.worker.execute import JobPayload, build_request

if TYPE_CHECKING:
    from chard.app import Celery

logger = logging.getLogger("chard.worker")


def deaths(message: TaskMessage) -> int:
    """Return how often a worker process died running ``message`` (its own header)."""
    return int(message.extra_headers.get(LOST_HEADER, 0))


def reliably(operation: Callable[..., Any], *args: Any, give_up: Callable[[], bool]) -> Any:
    """Run a broker call, retrying a lost connection until it succeeds or ``give_up()``.

    Settling is safe to repeat (a second ack of the same lease is a no-op). Giving up
    would leave a finished message leased, and run it again once the lease lapsed; so
    only a cold stop gives up (returning None).
    """
    pause, lost_at = 0.1, None
    while True:
        try:
            result = operation(*args)
        except BrokerConnectionError as exc:
            if give_up():
                logger.error("Broker unreachable during a cold stop: %s", exc)
                return None
            if lost_at is None:
                lost_at = time.monotonic()
                logger.warning("Broker connection lost: %s; retrying until it is back", exc)
            time.sleep(pause)
            pause = min(pause * 2, 2.0)
            continue
        if lost_at is not None:
            logger.warning("Broker connection restored after %.1fs", time.monotonic() - lost_at)
        return result


def record_failure(
    app: Celery,
    message: TaskMessage,
    error: BaseException,
    *,
    queue: str = "",
    delivery_count: int = 1,
    hostname: str | None = None,
) -> None:
    """Record that ``message``'s task ended in FAILURE without its body returning.

    For every way a worker ends a task itself (its process died, its hard time limit,
    an unregistered name, too many deliveries, an undecodable message): the state is
    stored and its workflow ended by :func:`chard.execution.outcome.failed`.

    Never raises: its callers are the worker's loops (a consumer's, the supervisor's),
    which must go on; if the store itself fails (the backend refused it), that is
    logged, and the caller still settles the message.
    """
    payload = JobPayload(b"", queue, delivery_count, message)
    request = build_request(message, payload, hostname or "")
    task = app.tasks.get(message.task)
    try:
        store = outcome.stores_result(app, task, request)
        extra = outcome.extra_meta(app, task, request) if store else None
        outcome.failed(app, task, request, error, store=store, name=message.task, extra=extra)
    except Exception as exc:
        logger.exception(
            "Task %s[%s] failed (%r), and recording it failed: %r",
            message.task,
            message.id,
            error,
            exc,
        )


def settle_lost(
    app: Celery,
    delivery: Delivery | None,
    message: TaskMessage,
    *,
    exitcode: int | None,
    pid: int | None,
    give_up: Callable[[], bool],
) -> None:
    """Settle ``message``, whose process died running it.

    With ``task_reject_on_worker_lost`` (the default) and a lease still held, the death
    is counted in the message itself (a header) and it goes back to its queue: at most
    ``task_max_deliveries`` runs in all, checked when it is next received, so a poison
    pill ends. Otherwise (or when it was acked on start, ``delivery`` None) it is
    FAILURE with :class:`~chard.exceptions.WorkerLostError`.
    """
    lost = deaths(message) + 1
    attempt = lost + (delivery.delivery_count - 1 if delivery is not None else 0)
    logger.error(
        "Process %s exited with exit code %s while running %s[%s] (attempt %d)",
        pid,
        exitcode,
        message.task,
        message.id,
        attempt,
    )
    if delivery is not None and app.conf.task_reject_on_worker_lost:
        body = with_header(delivery.body, LOST_HEADER, lost)
        again = OutgoingMessage(delivery.queue, body, message.priority, exchange="")
        reliably(app.broker.publish, again, give_up=give_up)
        reliably(delivery.ack, give_up=give_up)
        return
    error = WorkerLostError(f"worker process exited (exit code {exitcode}) while running the task")
    _fail(app, delivery, message, error, give_up)


def settle_timeout(
    app: Celery,
    delivery: Delivery | None,
    message: TaskMessage,
    time_limit: float | None,
    *,
    give_up: Callable[[], bool],
) -> None:
    """Settle a task whose process was killed at its hard time limit: FAILURE, not retried.

    As in Celery: :class:`~chard.exceptions.TimeLimitExceeded` is stored, the workflow
    ended, and the message acked (``delivery`` is None when it was acked on start).
    """
    logger.error(
        "Hard time limit (%ss) exceeded for %s[%s]; its process was killed",
        time_limit,
        message.task,
        message.id,
    )
    _fail(app, delivery, message, TimeLimitExceeded(time_limit), give_up)


def _fail(
    app: Celery,
    delivery: Delivery | None,
    message: TaskMessage,
    error: BaseException,
    give_up: Callable[[], bool],
) -> None:
    queue = delivery.queue if delivery is not None else ""
    count = delivery.delivery_count if delivery is not None else 1
    record_failure(app, message, error, queue=queue, delivery_count=count)
    if delivery is not None:
        reliably(delivery.ack, give_up=give_up)
