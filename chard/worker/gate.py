"""What a consumer decides about a message without running it: on its way in, and out.

On the way in (:meth:`Gate.admit`), the checks made before a message costs a pool
slot: undecodable or disallowed content (dead-lettered), revoked (REVOKED; see
:mod:`chard.worker.revocations`), unknown task (FAILURE + dead-lettered), too many
deliveries (FAILURE ``WorkerLostError`` + dead-lettered: a poison pill does not
loop), a future ETA from a client whose broker cannot delay (re-published with a
not-before time: workers never hold future work), and expiry (REVOKED). A message
that passes becomes an :class:`~chard.worker.held.Admitted` with its time limits.

On the way out (:meth:`Gate.settle_done`), what a finished run asks for: an ack
(or none, if it was acked on start), a requeue, or the dead-letter store.

Kept apart from :mod:`chard.worker.consumer`, which owns the threads and the
prefetch window: these are per-message decisions that take no lock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC
from typing import TYPE_CHECKING, Any

from chard import signals, states
from chard.brokers.base import Delivery, OutgoingMessage
from chard.exceptions import ContentDisallowed, DecodeError, NotRegistered, WorkerLostError
from chard.protocol.message import TaskMessage, peek, salvage
from chard.worker.execute import ExecOutcome, JobPayload, is_expired
from chard.worker.held import Admitted, ConsumerStats
from chard.worker.lost import deaths, record_failure
from chard.worker.revocations import Revocations

if TYPE_CHECKING:
    from chard.app import Celery
    from chard.task import Task

logger = logging.getLogger("chard.worker")


class Gate:
    """The per-message checks and verdicts of one consumer; see the module docstring.

    Args:
        app: the app whose tasks, settings, broker and backend are used.
        revocations: the revoked ids this consumer follows.
        stats: the consumer's counters, updated here.
        reliably: runs a settling broker call until it succeeds (the consumer's, which
            gives up only on a cold stop).
    """

    def __init__(
        self,
        app: Celery,
        revocations: Revocations,
        stats: ConsumerStats,
        reliably: Callable[..., None],
    ) -> None:
        self.app = app
        self.revocations = revocations
        self.stats = stats
        self._reliably = reliably
        self._max_deliveries = int(app.conf.task_max_deliveries or 0)
        self._accept_entries: list[str] | None = None  # accept_content when _accept was made
        self._accept: frozenset[str] = frozenset()

    # -- the way in -------------------------------------------------------------
    def admit(self, delivery: Delivery) -> Admitted | None:
        """Decode and check ``delivery``; what waits for a pool slot, or None if settled here."""
        message = self._decode(delivery)
        if message is None:
            return None
        task = self._check(delivery, message)
        if task is None:
            return None
        # (settings read as items: an attribute read first fails inside Python, building
        # an AttributeError, before Settings.__getattr__ is asked; five times the cost)
        conf = self.app.conf
        hard, soft = message.timelimit
        hard = hard if hard is not None else task.time_limit or conf["task_time_limit"]
        soft = soft if soft is not None else task.soft_time_limit
        soft = soft if soft is not None else conf["task_soft_time_limit"]
        payload = JobPayload(delivery.body, delivery.queue, delivery.delivery_count, message)
        acks_late = task.option("acks_late")
        if not acks_late and message.reply_to and self.app.backend is not None:
            self.app.backend.note_request(message.id, message.reply_to, acked_first=True)
        return Admitted(delivery, message, acks_late, payload, soft, hard, task.rate_limit)

    def _accepted(self) -> frozenset[str]:
        """The content types to decode (``app.accept_content``), worked out again on a change."""
        entries = self.app.conf["accept_content"]
        if entries != self._accept_entries:  # (compared by value: an edited list counts)
            self._accept, self._accept_entries = self.app.accept_content, list(entries)
        return self._accept

    def _decode(self, delivery: Delivery) -> TaskMessage | None:
        try:
            return TaskMessage.from_wire(delivery.body, self._accepted())
        except (DecodeError, ContentDisallowed) as exc:
            name, task_id = peek(delivery.body)
            logger.error(
                "Moved an undecodable message to the dead-letter store (task %s[%s], queue %r): %s",
                name,
                task_id,
                delivery.queue,
                exc,
            )
            self._reliably(delivery.dead_letter, f"undecodable: {exc}")
            self.stats.dead_lettered += 1
            salvaged = salvage(delivery.body, self._accepted())
            if salvaged is not None:  # its id is readable: waiters and workflows can end
                error = DecodeError(f"the worker could not decode the message: {exc}")
                self.record_failure(delivery, salvaged, error)
            return None

    def _check(self, delivery: Delivery, message: TaskMessage) -> Task[Any, Any] | None:
        """Run the checks that settle a message without running it; its task if it is to run."""
        self.stats.received += 1
        if message.reply_to and self.app.backend is not None:  # rpc:// replies go there
            self.app.backend.note_request(message.id, message.reply_to)
        if self.revocations.is_revoked(message.id):
            self._discard(delivery, message, "revoked")
            return None
        try:
            task: Task[Any, Any] = self.app.tasks[message.task]
        except NotRegistered as error:
            logger.error("Received unregistered task %s[%s]: %s", message.task, message.id, error)
            signals.task_unknown.send(
                sender=None, name=message.task, id=message.id, message=message, exc=error
            )
            self._set_aside(delivery, message, error, f"unregistered task: {error}")
            return None
        lost = self._too_many_deliveries(delivery, message)
        if lost is not None:
            logger.error("%s", lost)
            self._set_aside(delivery, message, lost, str(lost))
            return None
        if message.eta is not None and message.eta.timestamp() > time.time() + 0.5:
            self._defer(delivery, message)
            return None
        if is_expired(message):
            self._discard(delivery, message, "expired")
            return None
        logger.info("Task %s[%s] received", message.task, message.id)
        self.app.events.task_received(message)  # when this process sends events
        return task

    def _too_many_deliveries(
        self, delivery: Delivery, message: TaskMessage
    ) -> WorkerLostError | None:
        """The error to fail ``message`` with if its worker died too often running it."""
        attempts = delivery.delivery_count + deaths(message)
        most = self._max_deliveries
        limit = delivery.delivery_limit  # the queue's own (RabbitMQ's x-delivery-limit)
        by_queue = limit is not None and (not most or limit < most)
        if limit is not None and by_queue:
            most = limit
        if not most or attempts <= most:
            return None
        why = (
            f"x-delivery-limit={most - 1} of queue {delivery.queue!r}"
            if by_queue
            else f"task_max_deliveries={most}"
        )
        return WorkerLostError(
            f"task {message.task}[{message.id}] was delivered {attempts} times and its "
            f"worker died each time ({why}); set aside in the dead-letter store"
        )

    def _defer(self, delivery: Delivery, message: TaskMessage) -> None:
        # A client (e.g. Celery on Redis) put a future ETA straight on the queue: hand the
        # wait to the broker instead of holding the message here.
        assert message.eta is not None
        eta = message.eta if message.eta.tzinfo else message.eta.replace(tzinfo=UTC)
        deferred = OutgoingMessage(delivery.queue, delivery.body, message.priority, eta.timestamp())
        self._reliably(self.app.broker.publish, deferred)
        self._reliably(delivery.ack)
        logger.debug("Task %s[%s] deferred to its ETA %s", message.task, message.id, eta)

    def _discard(self, delivery: Delivery, message: TaskMessage, reason: str) -> None:
        payload = JobPayload(delivery.body, delivery.queue, delivery.delivery_count, message)
        try:
            self.revocations.discard(payload, message, reason)  # stores REVOKED, logs
        except Exception as exc:  # e.g. the backend refused the store: still discard it
            logger.exception(
                "Task %s[%s] %s; recording that failed: %r", message.task, message.id, reason, exc
            )
        self._reliably(delivery.ack)
        self.stats.revoked += 1

    def _set_aside(
        self, delivery: Delivery, message: TaskMessage, error: BaseException, reason: str
    ) -> None:
        """Fail ``message`` with ``error`` and move it to the dead-letter store."""
        self.record_failure(delivery, message, error)
        self._reliably(delivery.dead_letter, reason)
        self.stats.dead_lettered += 1

    def record_failure(
        self, delivery: Delivery, message: TaskMessage, error: BaseException
    ) -> None:
        """Store FAILURE with ``error`` for ``message`` (and end its workflow)."""
        record_failure(
            self.app,
            message,
            error,
            queue=delivery.queue,
            delivery_count=delivery.delivery_count,
            hostname=self.revocations.hostname,
        )

    # -- the way out ------------------------------------------------------------
    def settle_done(
        self,
        delivery: Delivery,
        message: TaskMessage,
        result: ExecOutcome | None,
        acked: bool,
        acks: list[Delivery] | None = None,
    ) -> None:
        """Settle a message whose run ended: count it; ack, requeue or set it aside.

        ``acked``: it was acked on start (nothing left to send). A plain ack goes to
        ``acks`` when given (the caller sends them together), else out at once.
        """
        if result is None:  # the pool target raised: a bug, logged by the pool; keep the message
            error = WorkerLostError("the worker failed to run the task (see its log)")
            self.record_failure(delivery, message, error)
            if not acked:
                self._reliably(delivery.dead_letter, str(error))
                self.stats.dead_lettered += 1
            return
        if result.state == states.FAILURE:
            self.stats.failed += 1
        elif result.state == states.SUCCESS:
            self.stats.succeeded += 1
        elif result.state == states.REVOKED:  # revoked after admission; the pool discarded it
            self.stats.revoked += 1
        if acked:
            return
        if result.action == "requeue":
            self._reliably(delivery.reject, True)
        elif result.action == "dead_letter":
            logger.error("Task %s[%s] set aside: %s", message.task, message.id, result.reason)
            self._reliably(delivery.dead_letter, result.reason or "set aside by the worker")
            self.stats.dead_lettered += 1
        elif acks is not None:
            acks.append(delivery)
        else:
            self._reliably(delivery.ack)
