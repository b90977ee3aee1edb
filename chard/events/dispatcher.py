"""Send events: buffer them in memory, publish them in batches from a background thread.

Why a flusher. An event is a monitoring by-product of a task, never part of it:
:meth:`EventDispatcher.send` only builds a dict and appends it to an in-memory
buffer, and a daemon thread publishes what piled up, one broker call per batch
(:data:`FLUSH_INTERVAL` apart at most), on the ``events`` broadcast channel. So a
task never waits on event I/O, and a slow or unreachable broker costs the worker
nothing but the oldest events once :data:`MAX_BUFFERED` wait (they are dropped,
with a warning): monitoring is best effort, as in Celery.

Why a switch. Whether events are sent is one flag, :class:`EventSwitch`, read on
every :meth:`~EventDispatcher.send` (the only cost when events are off). The
worker makes it in shared memory before its prefork children fork, so
:meth:`EventDispatcher.enable` or :meth:`~EventDispatcher.disable`, called in any
process of the node (the remote-control command ``enable_events``), takes effect
in all of them at their next event: no message to each child.

Fork. A dispatcher inherited through ``fork()`` starts afresh in the child: empty
buffer, no thread (started on the first event), the child's pid; the switch stays
shared. At interpreter exit, whatever is still buffered is published.
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import multiprocessing
import os
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from chard.protocol.events import (
    EVENTS_CHANNEL,
    EVENTS_MAXLEN,
    Event,
    encode_batch,
    group_of,
    utcoffset,
)

if TYPE_CHECKING:
    from chard.app import Celery

logger = logging.getLogger(__name__)

_FORK = multiprocessing.get_context("fork")

#: Longest wait (seconds) between an event and its publication.
FLUSH_INTERVAL = 0.1
#: Most events buffered while the broker cannot take them; the oldest go first.
MAX_BUFFERED = 10_000
#: Most events in one entry of the channel.
MAX_BATCH = 500
#: Longest pause between two attempts to reach a broker that is down (seconds).
MAX_BACKOFF = 10.0
#: How long :meth:`EventDispatcher.close` waits for the last publish.
CLOSE_TIMEOUT = 5.0

#: Every dispatcher of this process: reset after fork, flushed at exit.
_live: weakref.WeakSet[EventDispatcher] = weakref.WeakSet()


def anon_nodename() -> str:
    """Return the node name of a process that is not a worker (Celery's ``gen<pid>@host``)."""
    return f"gen{os.getpid()}@{socket.gethostname()}"


class EventSwitch:
    """Whether events are sent: one flag in shared memory, so forked children follow it."""

    def __init__(self, on: bool = False) -> None:
        self._flag: Any = _FORK.RawValue(ctypes.c_bool, on)

    @property
    def on(self) -> bool:
        """Whether events are sent now (a read of shared memory)."""
        return bool(self._flag.value)

    @on.setter
    def on(self, value: bool) -> None:
        self._flag.value = bool(value)


class EventDispatcher:
    """Send events of this process to the broker's ``events`` channel; see the module doc.

    Args:
        app: the app whose broker carries the events.
        hostname: the node name the events come from (a worker's ``-n``); by default
            Celery's anonymous ``gen<pid>@host``.
        enabled: whether to send at all; see :attr:`enabled`.
        groups: send only events of these groups (``"task"``, ``"worker"``), as Celery's
            ``groups=``; all when empty.
        switch: the flag to follow, shared with other processes of a node; a new one
            (set to ``enabled``) if None.
        connection, channel, **options: Celery's other arguments, accepted and unused
            (chard publishes through ``app.broker``).

    Thread-safe: any thread may call :meth:`send`.
    """

    def __init__(
        self,
        app: Celery,
        hostname: str | None = None,
        enabled: bool = True,
        *,
        groups: Iterable[str] | None = None,
        switch: EventSwitch | None = None,
        connection: Any = None,  # Celery's kombu connection: unused
        channel: Any = None,  # Celery's kombu channel: unused
        **options: Any,  # Celery's serializer=, buffer_while_offline=...: unused
    ) -> None:
        self.app = app
        self.hostname = hostname or anon_nodename()
        self.groups = frozenset(groups or ())
        if switch is None:
            switch = EventSwitch(enabled)
        self.switch = switch
        self._flag = switch._flag  # read directly by `enabled`: it is on every task's path
        #: Called (in this process) by :meth:`enable` / :meth:`disable` (Celery's sets).
        self.on_enabled: set[Callable[[], None]] = set()
        self.on_disabled: set[Callable[[], None]] = set()
        self._clock = 0
        self._start_afresh()
        _live.add(self)

    def _start_afresh(self) -> None:
        """Set up the per-process part: buffer, thread, locks (again in a forked child)."""
        self.pid = os.getpid()
        self._buffer: deque[Event] = deque(maxlen=MAX_BUFFERED)
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._publishing = threading.Lock()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._dropped = 0  # events the full buffer lost since the last warning
        self._utcoffset = utcoffset()

    # -- on and off -----------------------------------------------------------
    @property
    def enabled(self) -> bool:
        """Whether :meth:`send` sends; follows the switch, so another process may change it."""
        return bool(self._flag.value)

    def enable(self) -> None:
        """Start sending events, in every process sharing the switch; runs ``on_enabled``."""
        self.switch.on = True
        for callback in list(self.on_enabled):
            callback()

    def disable(self) -> None:
        """Stop sending events (what is buffered still goes out); runs ``on_disabled``."""
        if not self.switch.on:
            return
        self.switch.on = False
        for callback in list(self.on_disabled):
            callback()

    # -- sending --------------------------------------------------------------
    def send(self, type_: str, blind: bool = False, **fields: Any) -> Event | None:
        """Queue event ``type_`` with ``fields`` for the next batch; return it (None if off).

        Never blocks on the broker and never raises for it. Celery's ``retry`` and
        ``retry_policy`` arguments are accepted and unused (the flusher retries).
        """
        if not self._flag.value:
            return None
        return self.publish(type_, fields, blind=blind)

    def publish(
        self, type_: str, fields: dict[str, Any], producer: Any = None, blind: bool = False
    ) -> Event | None:
        """Queue event ``type_`` whatever :attr:`enabled` says (Celery's ``publish``).

        ``producer`` (Celery's kombu producer) is unused; ``blind`` events carry no
        logical clock. A ``timestamp`` in ``fields`` is kept, as in Celery.
        """
        if self.groups and group_of(type_) not in self.groups:
            return None
        if "retry" in fields or "retry_policy" in fields:
            fields = {k: v for k, v in fields.items() if k not in ("retry", "retry_policy")}
        if not blind:
            self._clock += 1
        # One dict literal: this runs for every event of every task while events are on.
        event: Event = {
            "hostname": self.hostname,
            "utcoffset": self._utcoffset,
            "pid": self.pid,
            "clock": 0 if blind else self._clock,
            "timestamp": time.time(),
            **fields,
            "type": type_,
        }
        buffer = self._buffer
        if len(buffer) == MAX_BUFFERED:
            self._dropped += 1  # the deque drops the oldest as this one goes in
        buffer.append(event)
        if self._thread is None:
            self._start_thread()
        size = len(buffer)
        if size == 1 or size == MAX_BATCH:  # it was empty (the flusher may sleep), or a batch
            self._wake.set()
        return event

    def _start_thread(self) -> None:
        with self._start_lock:
            if self._thread is not None or self._closed.is_set():
                return
            self._thread = threading.Thread(
                target=self._flush_loop, name="chard-events", daemon=True
            )
            self._thread.start()

    def _flush_loop(self) -> None:
        """Publish batches until :meth:`close`; back off while the broker is down."""
        pause = 0.5
        while not self._closed.is_set():
            self._wake.wait()
            self._wake.clear()
            if len(self._buffer) < MAX_BATCH:  # let a batch gather (close cuts it short)
                self._closed.wait(FLUSH_INTERVAL)
            if self._publish_buffered():
                pause = 0.5
                continue
            self._closed.wait(pause)
            pause = min(pause * 2, MAX_BACKOFF)
            self._wake.set()  # try again

    def flush(self) -> bool:
        """Publish what is buffered now, in this thread; False if the broker refused it.

        Events the broker refused stay buffered, in order, for the next try.
        """
        return self._publish_buffered()

    def _publish_buffered(self) -> bool:
        with self._publishing:
            buffer = self._buffer
            while buffer:
                batch: list[Event] = []
                while buffer and len(batch) < MAX_BATCH:
                    batch.append(buffer.popleft())
                try:
                    payload = encode_batch(batch)
                    self.app.broker.broadcast(EVENTS_CHANNEL, payload, maxlen=EVENTS_MAXLEN)
                except Exception as exc:  # the broker is down, or cannot broadcast
                    buffer.extendleft(reversed(batch))
                    logger.warning("Cannot send %d event(s): %s", len(batch), exc)
                    self._warn_dropped()
                    return False
        self._warn_dropped()
        return True

    def _warn_dropped(self) -> None:
        """Say how many events a full buffer lost since the last time (once per publish)."""
        dropped, self._dropped = self._dropped, 0
        if dropped:
            logger.warning(
                "Dropped %d event(s): more than %d waited for the broker", dropped, MAX_BUFFERED
            )

    def close(self) -> None:
        """Publish what is buffered and stop the flusher (Celery's ``close``). Idempotent.

        Events the broker refuses now are dropped, with a warning saying how many.
        """
        if self.pid != os.getpid():
            return
        self._closed.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(CLOSE_TIMEOUT)
        if self._buffer and not self.flush():
            logger.warning("Dropped %d event(s) the broker did not take", len(self._buffer))
            self._buffer.clear()

    def __enter__(self) -> EventDispatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _after_fork_in_child() -> None:
    for dispatcher in list(_live):
        dispatcher._start_afresh()


def _at_exit() -> None:
    for dispatcher in list(_live):
        try:
            dispatcher.close()
        except Exception as exc:  # exiting anyway: say what was lost
            logger.warning("Events not sent at exit: %s", exc)


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_at_exit)
