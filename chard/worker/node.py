"""The node as remote control sees it: its settings, and a way to ask its consuming processes.

A command (:mod:`chard.worker.commands`) gets a :class:`Node` and nothing else. The
node's own facts (name, pool, queues, the revocation record) are answered from the
main process; what lives in the consuming processes (what they hold, per-task
counts) and what they must change (limits, queues) goes through
:attr:`Node.processes` (see :mod:`chard.worker.process_control`).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, Protocol

from chard.worker.process_control import ProcessControl, ask_children

if TYPE_CHECKING:
    from chard.app import Celery
    from chard.events import EventDispatcher
    from chard.worker.revocations import Revocations


class Processes(Protocol):
    """The node's consuming processes, asked together."""

    def ask(self, action: str, arguments: Mapping[str, Any], timeout: float) -> list[Any]:
        """Return each process's answer to ``action`` (those that answered within ``timeout``)."""

    def pids(self) -> list[int]:
        """Return the ids of the processes that run tasks."""


class Sizing(Protocol):
    """The node's pool size at run time (the worker implements it)."""

    def pool_grow(self, n: int = 1) -> int:
        """Add ``n`` processes (or threads); return the new size."""

    def pool_shrink(self, n: int = 1) -> int:
        """Retire ``n`` processes warmly, keeping one; return the new size."""

    def autoscale_update(self, max: int | None, min: int | None) -> tuple[int, int]:
        """Change the autoscale bounds; raises ImproperlyConfigured without --autoscale."""

    def pool_size(self) -> int:
        """How many processes (or threads) the pool has now."""

    def prefetch_count(self) -> int:
        """How many messages the node leases ahead now, in all its consumers."""


class LocalProcesses:
    """The one consumer of a threads or solo node, in this very process."""

    def __init__(self, control: ProcessControl) -> None:
        self.control = control

    def ask(self, action: str, arguments: Mapping[str, Any], timeout: float) -> list[Any]:
        return [self.control.handle(action, arguments)]

    def pids(self) -> list[int]:
        return [os.getpid()]


class ChildProcesses:
    """The children of a prefork node, asked over their pipes.

    Args:
        links: returns ``(pipe, pid)`` of every live child (the supervisor's).
    """

    def __init__(self, links: Callable[[], list[tuple[Connection, int]]]) -> None:
        self._links = links
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()  # one question on the pipes at a time

    def ask(self, action: str, arguments: Mapping[str, Any], timeout: float) -> list[Any]:
        with self._lock:
            conns = [conn for conn, _ in self._links()]
            return ask_children(conns, next(self._numbers), action, arguments, timeout)

    def pids(self) -> list[int]:
        return [pid for _, pid in self._links()]


@dataclass
class Node:
    """One worker node, for its control commands."""

    app: Celery
    #: The node name (``-n``), which replies are keyed by.
    hostname: str
    #: The pool kind: prefork, threads or solo.
    pool: str
    #: The queues consumed. With prefork, the very list the children are forked with, so
    #: a child started after ``add_consumer`` consumes the new queue too.
    queues: list[str]
    max_tasks_per_child: int | None
    #: The node's revocation record (the parent's, with prefork).
    revocations: Revocations
    processes: Processes
    #: Warm-stop the node (``shutdown``).
    stop: Callable[[], None]
    #: The node's event switch (``enable_events``/``disable_events``): shared memory,
    #: so a change made here reaches every prefork child at its next event.
    events: EventDispatcher
    #: Grow, shrink, autoscale the pool (``pool_grow``/``pool_shrink``/``autoscale``).
    sizing: Sizing
    #: ``time.monotonic()`` at start, for ``uptime``.
    started: float = field(default_factory=time.monotonic)
    #: How long the command being run may wait for the processes (set per request).
    answer_timeout: float = 1.0

    def ask(self, action: str, **arguments: Any) -> list[Any]:
        """Ask every consuming process ``action``; see :class:`Processes`."""
        return self.processes.ask(action, arguments, self.answer_timeout)
