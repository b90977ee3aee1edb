"""Remote control of the workers, client side: ``app.control``.

For now one command, :meth:`Control.revoke`. Where Celery sends a revocation to
the workers running at that moment (a worker that restarts, or starts later,
forgets it and runs the task), chard appends it to the broker's durable
``revoke`` broadcast channel: every worker reads that log when it starts and
follows it while it runs, so a revocation holds for :data:`REVOKE_EXPIRES`
seconds whichever worker the task reaches.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from chard.exceptions import ChardError
from chard.protocol.control import (
    DEFAULT_TERMINATE_SIGNAL,
    REVOKE_CHANNEL,
    REVOKE_EXPIRES,
    Revocation,
)

if TYPE_CHECKING:
    from chard.app import Celery

logger = logging.getLogger(__name__)


class RepliesNotSupported(ChardError, NotImplementedError):
    """A control command asked to wait for the workers' replies, which chard cannot send yet."""


class Control:
    """Send control commands to every worker of an app (``app.control``)."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def revoke(
        self,
        task_id: str | Iterable[str],
        destination: Sequence[str] | None = None,
        terminate: bool = False,
        signal: str | int | None = DEFAULT_TERMINATE_SIGNAL,
        *,
        connection: Any = None,  # Celery's kombu connection; chard uses app.broker
        reply: bool = False,
        timeout: float | None = None,
    ) -> None:
        """Revoke one task or several: workers discard them instead of running them.

        A revocation is durable: a worker that starts, or restarts, within
        :data:`REVOKE_EXPIRES` seconds (3 hours) honours it too. A task that is
        already running is left alone unless ``terminate`` is set.

        Args:
            task_id: a task id, or an iterable of them (sent as one revocation).
            destination: Celery's list of worker names; accepted and ignored, since
                a revocation must reach every worker, including later ones.
            terminate: also kill the process running the task (prefork pool only;
                the task ends REVOKED). Use it for stuck tasks: the task gets no
                chance to clean up.
            signal: the signal ``terminate`` sends: ``"SIGTERM"`` (default; pool
                children ignore SIGTERM, so the pool sends SIGKILL for it),
                ``"SIGKILL"``, ``"SIGUSR1"``... or its number.
            connection: ignored (Celery's kombu connection).
            reply: wait for the workers' replies; not supported yet (raises).
            timeout: how long ``reply`` would wait; ignored.

        Raises:
            RepliesNotSupported: ``reply=True`` (nothing is sent).
            ValueError: ``signal`` names no signal.
            BrokerConnectionError: the broker cannot be reached.
        """
        if reply:
            raise RepliesNotSupported(
                "revoke(reply=True) / result.revoke(wait=True) waits for the workers' replies, "
                "which chard cannot send yet; nothing was revoked. Revoke without waiting: "
                "the revocation is durable, and the task's state becomes REVOKED when a "
                "worker discards it"
            )
        ids = [task_id] if isinstance(task_id, str) else list(task_id)
        if not ids:
            return
        revocation = Revocation.create(
            ids, now=time.time(), terminate=terminate, signal=signal, ttl=REVOKE_EXPIRES
        )
        self.app.broker.broadcast(REVOKE_CHANNEL, revocation.to_payload())
        logger.debug("Revoked %d task(s) from %s (terminate=%s)", len(ids), ids[0], terminate)
