"""Remote control of the workers, client side: ``app.control`` and ``app.control.inspect()``.

A command is a :class:`~chard.protocol.control.ControlRequest` appended to the
broker's ``control`` broadcast channel; every node running at that moment reads
it, acts on it if it is named in ``destination`` (or none is given), and, when the
client waits for replies, appends one :class:`~chard.protocol.control.ControlReply`
under its node name to the ``control.reply`` channel. The client reads that
channel from its tail, taken before sending, and keeps the replies with its ticket
until ``timeout`` passes (or every node in ``destination`` has answered). Replies
come back in Celery's shapes: ``[{'w1@host': {'ok': 'pong'}}]`` from
:meth:`Control.broadcast`, ``{'w1@host': [...]}`` (or None when no node replied)
from :class:`Inspect`.

Revocation is the exception: where Celery sends it to the workers running at that
moment (a worker that restarts, or starts later, forgets it and runs the task),
chard appends it to the broker's durable ``revoke`` channel, which every worker
reads when it starts and follows while it runs, so a revocation holds for
:data:`REVOKE_EXPIRES` seconds whichever worker the task reaches.

With ``chard_celery_compat``, every request also goes to Celery's workers on the broker's
``celery.pidbox`` and their replies are gathered beside chard's (:mod:`chard.control_pidbox`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from chard.control_inspect import Inspect, Reply, ReplyCallback, flatten_reply
from chard.control_pidbox import CeleryCall, Unclaimed
from chard.exceptions import DecodeError
from chard.protocol.control import (
    CONTROL_CHANNEL,
    CONTROL_MAXLEN,
    DEFAULT_TERMINATE_SIGNAL,
    REPLY_CHANNEL,
    REVOKE_CHANNEL,
    REVOKE_EXPIRES,
    ControlReply,
    ControlRequest,
    Revocation,
    parse_rate,
)
from chard.protocol.pidbox import revoke_cast

if TYPE_CHECKING:
    from chard.app import Celery

logger = logging.getLogger(__name__)

__all__ = ["Control", "Inspect", "flatten_reply"]

#: With ``chard_celery_compat``, how long each look at one reply source lasts before the
#: other (chard's channel, Celery's reply queue) is looked at (seconds).
CELERY_REPLY_SLICE = 0.05


def _answer(payload: bytes, ticket: str) -> dict[str, Reply] | None:
    """Return ``{node: reply}`` from a ``control.reply`` entry for ``ticket``, else None."""
    try:
        answer = ControlReply.from_payload(payload)
    except DecodeError as exc:
        logger.warning("Ignoring a malformed control reply: %s", exc)
        return None
    if answer.ticket != ticket:
        return None  # another client's
    return {answer.node: answer.reply}


class Control:
    """Send control commands to the workers of an app (``app.control``)."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self._unclaimed = Unclaimed()  # Celery workers' replies taken for another call

    def inspect(
        self,
        destination: str | Sequence[str] | None = None,
        timeout: float = 1.0,
        callback: ReplyCallback | None = None,
        connection: Any = None,  # Celery's kombu connection; chard uses app.broker
        limit: int | None = None,
    ) -> Inspect:
        """Return an :class:`Inspect` that asks ``destination`` (default: every node)."""
        return Inspect(self, destination, timeout, callback, limit)

    def broadcast(
        self,
        command: str,
        arguments: dict[str, Any] | None = None,
        destination: str | Sequence[str] | None = None,
        connection: Any = None,  # Celery's kombu connection; chard uses app.broker
        reply: bool = False,
        timeout: float = 1.0,
        limit: int | None = None,
        callback: ReplyCallback | None = None,
        **extra: Any,
    ) -> list[dict[str, Reply]] | None:
        """Send ``command`` to the nodes; with ``reply``, return their replies.

        Args:
            command: the command's name (``chard inspect --help`` and ``chard control
                --help`` list them).
            arguments: its keyword arguments (JSON values); ``extra`` adds more.
            destination: a node name or a list of them; None for every node.
            reply: wait up to ``timeout`` seconds and return ``[{node: reply}, ...]``.
            timeout: how long to wait for replies; also the request's expiry (a node
                that reads it later ignores it).
            limit: stop waiting after this many replies (default: the number of nodes
                in ``destination``, when given).
            callback: called with each ``{node: reply}`` as it comes in.

        Returns:
            With ``reply``, the replies in arrival order (a node that did not answer
            in time is absent); None without.

        Raises:
            BrokerConnectionError: the broker cannot be reached.
            NotImplementedError: the broker has no broadcast channels.
        """
        arguments = {**(arguments or {}), **extra}
        if command == "revoke":  # Celery revokes this way: make it durable, as revoke() does
            return self.revoke(
                arguments.get("task_id") or [],
                destination,
                bool(arguments.get("terminate")),
                arguments.get("signal"),
                reply=reply,
                timeout=timeout,
                limit=limit,
                callback=callback,
            )
        return self._send(command, arguments, destination, reply, timeout, limit, callback)

    def _send(
        self,
        command: str,
        arguments: dict[str, Any],
        destination: str | Sequence[str] | None,
        reply: bool,
        timeout: float,
        limit: int | None,
        callback: ReplyCallback | None,
    ) -> list[dict[str, Reply]] | None:
        """Append the request to the ``control`` channel; with ``reply``, gather the replies."""
        broker = self.app.broker
        request = ControlRequest.create(
            command,
            arguments,
            destination=destination,
            reply=reply,
            now=time.time(),
            timeout=timeout,
        )
        cursor = broker.broadcast_tail(REPLY_CHANNEL) if reply else ""
        celery = None
        if self.app.conf["chard_celery_compat"]:  # Celery workers answer on their pidbox
            celery = CeleryCall.send(broker, request, self._unclaimed)
        broker.broadcast(CONTROL_CHANNEL, request.to_payload(), maxlen=CONTROL_MAXLEN)
        if not reply:
            return None
        if limit is None and request.destination is not None:
            limit = len(set(request.destination))
        return self._gather(request.ticket, cursor, timeout, limit, callback, celery)

    def _gather(
        self,
        ticket: str,
        cursor: str,
        timeout: float,
        limit: int | None,
        callback: ReplyCallback | None,
        celery: CeleryCall | None = None,
    ) -> list[dict[str, Reply]]:
        """Read the reply channel after ``cursor`` until ``timeout``, keeping ``ticket``'s
        (and, with ``celery``, Celery workers' replies to its copy, looking at each in turn)."""
        broker = self.app.broker
        deadline = time.monotonic() + timeout
        replies: list[dict[str, Reply]] = []
        while limit is None or len(replies) < limit:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            wait = remaining if celery is None else min(remaining, CELERY_REPLY_SLICE)
            entries = broker.broadcast_read(REPLY_CHANNEL, cursor, wait)
            if entries:
                cursor = entries[-1][0]
            answers = [answer for _, payload in entries if (answer := _answer(payload, ticket))]
            if celery is not None:
                answers.extend(celery.replies(0))
            for answer in answers:
                replies.append(answer)
                if callback is not None:
                    callback(answer)
        return replies

    def ping(
        self, destination: str | Sequence[str] | None = None, timeout: float = 1.0, **kwargs: Any
    ) -> list[dict[str, Reply]]:
        """Ping the nodes: ``[{'w1@host': {'ok': 'pong'}}, ...]`` (empty if none answered)."""
        return (
            self.broadcast("ping", reply=True, destination=destination, timeout=timeout, **kwargs)
            or []
        )

    def revoke(
        self,
        task_id: str | Iterable[str],
        destination: Sequence[str] | None = None,
        terminate: bool = False,
        signal: str | int | None = DEFAULT_TERMINATE_SIGNAL,
        *,
        connection: Any = None,  # Celery's kombu connection; chard uses app.broker
        reply: bool = False,
        timeout: float = 1.0,
        limit: int | None = None,
        callback: ReplyCallback | None = None,
    ) -> list[dict[str, Reply]] | None:
        """Revoke one task or several: workers discard them instead of running them.

        A revocation is durable: a worker that starts, or restarts, within
        :data:`REVOKE_EXPIRES` seconds (3 hours) honours it too. A task that is
        already running is left alone unless ``terminate`` is set.

        Args:
            task_id: a task id, or an iterable of them (sent as one revocation).
            destination: the nodes whose replies are awaited; the revocation itself
                reaches every worker, including later ones.
            terminate: also kill the process running the task (prefork pool only;
                the task ends REVOKED). Use it for stuck tasks: the task gets no
                chance to clean up.
            signal: the signal ``terminate`` sends: ``"SIGTERM"`` (default; pool
                children ignore SIGTERM, so the pool sends SIGKILL for it),
                ``"SIGKILL"``, ``"SIGUSR1"``... or its number.
            connection: ignored (Celery's kombu connection).
            reply: wait up to ``timeout`` for each node to say it has taken the
                revocation in: ``[{'w1@host': {'ok': 'tasks ... flagged as revoked'}}]``.
            timeout: how long ``reply`` waits.
            limit: stop waiting after this many replies.
            callback: called with each ``{node: reply}`` as it comes in.

        Raises:
            ValueError: ``signal`` names no signal.
            BrokerConnectionError: the broker cannot be reached.
        """
        ids = [task_id] if isinstance(task_id, str) else list(task_id)
        if not ids:
            return [] if reply else None
        revocation = Revocation.create(
            ids, now=time.time(), terminate=terminate, signal=signal, ttl=REVOKE_EXPIRES
        )
        if self.app.conf["chard_celery_compat"]:  # Celery workers hear it on their pidbox
            cast = revoke_cast(ids, terminate=terminate, signal=revocation.signal, now=time.time())
            self.app.broker.celery_cast(cast)
        self.app.broker.broadcast(REVOKE_CHANNEL, revocation.to_payload())
        logger.debug("Revoked %d task(s) from %s (terminate=%s)", len(ids), ids[0], terminate)
        if not reply:
            return None
        # The revocation is already durable; this asks each node to confirm it read it.
        arguments = {"task_id": ids, "terminate": terminate, "signal": revocation.signal}
        return self._send("revoke", arguments, destination, True, timeout, limit, callback)

    def rate_limit(
        self,
        task_name: str,
        rate_limit: str | float | None,
        destination: str | Sequence[str] | None = None,
        **kwargs: Any,
    ) -> list[dict[str, Reply]] | None:
        """Set the rate limit of ``task_name`` on the nodes (``'10/m'``, ``'5/s'``; None: none).

        Per node, as in Celery; a prefork node splits it evenly among its processes.

        Raises:
            ValueError: ``rate_limit`` is not a rate (nothing is sent).
        """
        parse_rate(rate_limit)
        arguments = {"task_name": task_name, "rate_limit": rate_limit}
        return self.broadcast("rate_limit", arguments, destination, **kwargs)

    def time_limit(
        self,
        task_name: str,
        soft: float | None = None,
        hard: float | None = None,
        destination: str | Sequence[str] | None = None,
        **kwargs: Any,
    ) -> list[dict[str, Reply]] | None:
        """Set the soft and hard time limits (seconds) of ``task_name`` on the nodes."""
        arguments = {"task_name": task_name, "soft": soft, "hard": hard}
        return self.broadcast("time_limit", arguments, destination, **kwargs)

    def add_consumer(
        self,
        queue: str,
        exchange: str | None = None,
        exchange_type: str = "direct",
        routing_key: str | None = None,
        options: dict[str, Any] | None = None,
        destination: str | Sequence[str] | None = None,
        **kwargs: Any,
    ) -> list[dict[str, Reply]] | None:
        """Make the nodes consume from ``queue`` too (exchange options are Celery's, ignored)."""
        return self.broadcast("add_consumer", {"queue": queue}, destination, **kwargs)

    def cancel_consumer(
        self, queue: str, destination: str | Sequence[str] | None = None, **kwargs: Any
    ) -> list[dict[str, Reply]] | None:
        """Make the nodes stop consuming from ``queue``."""
        return self.broadcast("cancel_consumer", {"queue": queue}, destination, **kwargs)

    def shutdown(
        self, destination: str | Sequence[str] | None = None, **kwargs: Any
    ) -> list[dict[str, Reply]] | None:
        """Warm-stop the nodes: running tasks finish, unstarted ones go back to the queue."""
        return self.broadcast("shutdown", {}, destination, **kwargs)

    def enable_events(
        self, destination: str | Sequence[str] | None = None, **kwargs: Any
    ) -> list[dict[str, Reply]] | None:
        """Make the nodes send task and worker events (as ``worker -E``) until disabled."""
        return self.broadcast("enable_events", {}, destination, **kwargs)

    def disable_events(
        self, destination: str | Sequence[str] | None = None, **kwargs: Any
    ) -> list[dict[str, Reply]] | None:
        """Make the nodes stop sending events."""
        return self.broadcast("disable_events", {}, destination, **kwargs)

    def pool_grow(
        self, n: int = 1, destination: str | Sequence[str] | None = None, **kwargs: Any
    ) -> list[dict[str, Reply]] | None:
        """Grow each node's pool by ``n`` processes (threads)."""
        return self.broadcast("pool_grow", {"n": n}, destination, **kwargs)

    def pool_shrink(
        self, n: int = 1, destination: str | Sequence[str] | None = None, **kwargs: Any
    ) -> list[dict[str, Reply]] | None:
        """Shrink each node's pool by ``n`` processes, idle ones first, warmly."""
        return self.broadcast("pool_shrink", {"n": n}, destination, **kwargs)

    def autoscale(
        self, max: int, min: int, destination: str | Sequence[str] | None = None, **kwargs: Any
    ) -> list[dict[str, Reply]] | None:
        """Change the autoscale bounds of nodes started with ``--autoscale``."""
        return self.broadcast("autoscale", {"max": max, "min": min}, destination, **kwargs)
