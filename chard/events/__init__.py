"""Monitoring events, Celery's names and fields: ``app.events``.

* :mod:`.dispatcher` sends them (batched, off the task's path);
* :mod:`.receiver` follows them: ``app.events.Receiver(handlers={...}).capture()``;
* :mod:`.state` folds them into a picture of the cluster: ``app.events.State()``.

Which process sends what: a client sends ``task-sent`` (``task_send_sent_event``);
the process that runs a task sends its task events (in a prefork node, each child);
the worker node's main process sends ``worker-online``/``-heartbeat``/``-offline``.
The wire format is :mod:`chard.protocol.events`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from chard.events.dispatcher import EventDispatcher, EventSwitch
from chard.events.receiver import EventReceiver, Handler
from chard.events.state import State, TaskState, WorkerState
from chard.protocol.events import Event

if TYPE_CHECKING:
    from chard.app import Celery
    from chard.protocol.message import TaskMessage

__all__ = [
    "Event",
    "EventDispatcher",
    "EventReceiver",
    "EventSwitch",
    "Events",
    "State",
    "TaskState",
    "WorkerState",
]


class Events:
    """``app.events``: make dispatchers, receivers and states (Celery's factory names)."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        #: The dispatcher this process's task events go out through: set by the worker
        #: (inherited by its prefork children, where it starts afresh), None elsewhere.
        #: Task events are sent only while it is :attr:`~EventDispatcher.enabled`.
        self.task_dispatcher: EventDispatcher | None = None
        self._client: tuple[int, EventDispatcher] | None = None

    def Dispatcher(  # Celery's name
        self,
        connection: Any = None,
        hostname: str | None = None,
        enabled: bool = True,
        **options: Any,
    ) -> EventDispatcher:
        """Return a new dispatcher (close it after use); Celery's arguments are accepted."""
        return EventDispatcher(self.app, hostname, enabled, connection=connection, **options)

    def Receiver(  # Celery's name
        self,
        connection: Any = None,
        handlers: Mapping[str, Handler] | None = None,
        **options: Any,
    ) -> EventReceiver:
        """Return a receiver of the events sent from now on (``from_start=True``: all kept)."""
        return EventReceiver(self.app, connection, handlers, **options)

    def State(self, **options: Any) -> State:  # Celery's name
        """Return an empty cluster :class:`~chard.events.state.State`."""
        return State(**options)

    @contextmanager
    def default_dispatcher(
        self, hostname: str | None = None, enabled: bool = True, **options: Any
    ) -> Iterator[EventDispatcher]:
        """Yield a dispatcher for the block and close it after (Celery's context manager)."""
        dispatcher = self.Dispatcher(hostname=hostname, enabled=enabled, **options)
        try:
            yield dispatcher
        finally:
            dispatcher.close()

    def client_dispatcher(self) -> EventDispatcher:
        """Return this process's dispatcher for ``task-sent`` (made on first use)."""
        client = self._client
        if client is None or client[0] != os.getpid():
            client = self._client = (os.getpid(), EventDispatcher(self.app))
        return client[1]

    def task_sent(self, message: TaskMessage, queue: str) -> None:
        """Send ``task-sent`` for ``message`` published to ``queue`` (Celery's fields)."""
        fields = _message_fields(message)
        self.client_dispatcher().send(
            "task-sent", queue=queue, exchange="", routing_key=queue, **fields
        )

    def task_received(self, message: TaskMessage) -> None:
        """Send ``task-received`` for ``message`` through :attr:`task_dispatcher`, if on."""
        dispatcher = self.task_dispatcher
        if dispatcher is not None and dispatcher.enabled:
            dispatcher.send("task-received", **_message_fields(message))


def _message_fields(message: TaskMessage) -> dict[str, Any]:
    """The fields ``task-sent`` and ``task-received`` carry about a message (Celery's).

    A group member also carries ``group_id``, and a chord's header member the id of
    the chord's body (``chord_body_id``): beyond Celery's fields (its consumers ignore
    them), so the dashboard can draw a chord as its header members leading to its body.
    """
    fields = {
        "uuid": message.id,
        "name": message.task,
        "args": message.argsrepr,
        "kwargs": message.kwargsrepr,
        "root_id": message.root_id or message.id,
        "parent_id": message.parent_id,
        "retries": message.retries,
        "eta": message.eta.isoformat() if message.eta is not None else None,
        "expires": message.expires.isoformat() if message.expires is not None else None,
    }
    if message.group:
        fields["group_id"] = message.group
    options = (message.chord or {}).get("options")
    body_id = options.get("task_id") if isinstance(options, dict) else None
    if isinstance(body_id, str):
        fields["chord_body_id"] = body_id
    return fields
