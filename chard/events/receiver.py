"""Receive events: follow the broker's ``events`` channel and call a handler per event.

Celery's ``EventReceiver`` consumes a queue bound to its event exchange; chard reads
the ``events`` broadcast log (see :mod:`chard.events.dispatcher`) after a cursor
taken when the receiver is made, so it sees every event sent from then on (or,
with ``from_start=True``, the whole log the broker still keeps). Handlers are
Celery's: ``{"task-succeeded": fn, "*": fallback}``, each called with the event
dict, to which ``local_received`` (this host's time of receipt) is added.

A batch that cannot be read (another version, not JSON) or an event without its
required fields is skipped with a warning: a receiver never stops for bad input.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from chard.brokers.base import BROADCAST_START
from chard.exceptions import DecodeError
from chard.protocol.events import EVENTS_CHANNEL, Event, decode_batch

if TYPE_CHECKING:
    from chard.app import Celery

logger = logging.getLogger(__name__)

#: Longest single blocking read, so that :attr:`EventReceiver.should_stop` is seen.
READ_TIMEOUT = 1.0

Handler = Callable[[Event], Any]


class EventReceiver:
    """Capture events from the cluster and hand each to its handler.

    Args:
        app: the app whose broker carries the events.
        handlers: event type -> callable; ``"*"`` gets every type without its own.
        from_start: read the whole kept log instead of only what comes from now on.
        channel, routing_key, node_id, queue_prefix, accept, **options: Celery's
            arguments, accepted and unused (no per-receiver queue in chard).
    """

    def __init__(
        self,
        app: Celery,
        channel: Any = None,  # Celery's connection or channel (positional): unused
        handlers: Mapping[str, Handler] | None = None,
        *,
        from_start: bool = False,
        **options: Any,
    ) -> None:
        self.app = app
        self.handlers: dict[str, Handler] = dict(handlers or {})
        #: Set (from a handler, or another thread) to end :meth:`capture` soon.
        self.should_stop = False
        self._pending: deque[Event] = deque()
        self._cursor = BROADCAST_START if from_start else app.broker.broadcast_tail(EVENTS_CHANNEL)

    def process(self, type_: str, event: Event) -> None:
        """Call the handler of ``type_`` (or ``"*"``) with ``event``."""
        handler = self.handlers.get(type_) or self.handlers.get("*")
        if handler is not None:
            handler(event)

    def capture(self, limit: int | None = None, timeout: float | None = None, **_: Any) -> None:
        """Handle events as they come, until ``limit`` were handled or ``timeout`` went idle.

        Args:
            limit: stop after this many events (None: no limit).
            timeout: stop after this many seconds without an event (None: never). Where
                Celery raises ``socket.timeout`` then, chard returns.

        Raises:
            BrokerConnectionError: the broker cannot be reached.
        """
        for _event in self.itercapture(limit=limit, timeout=timeout):
            pass

    def itercapture(
        self, limit: int | None = None, timeout: float | None = None, **_: Any
    ) -> Iterator[Event]:
        """Like :meth:`capture`, yielding each event after its handler ran."""
        handled = 0
        idle_since = time.monotonic()
        while not self.should_stop and (limit is None or handled < limit):
            if self._pending:  # decoded earlier, after a limit cut a batch short
                event = self._pending.popleft()
                self.process(event["type"], event)
                handled += 1
                yield event
                continue
            wait = READ_TIMEOUT
            if timeout is not None:
                left = idle_since + timeout - time.monotonic()
                if left <= 0:
                    return
                wait = min(wait, left)
            entries = self.app.broker.broadcast_read(EVENTS_CHANNEL, self._cursor, wait)
            for cursor, payload in entries:
                self._cursor = cursor
                self._pending.extend(self.events_of(payload))
            if entries:
                idle_since = time.monotonic()

    def events_of(self, payload: bytes) -> list[Event]:
        """Decode one entry of the channel; skip, with a warning, what cannot be read."""
        try:
            events, dropped = decode_batch(payload)
        except DecodeError as exc:
            logger.warning("Ignoring an event batch: %s", exc)
            return []
        if dropped:
            logger.warning(
                "Ignoring %d malformed event(s): an event needs a string type and hostname "
                "and a numeric timestamp",
                dropped,
            )
        now = time.time()
        for event in events:
            event["local_received"] = now
        return events
