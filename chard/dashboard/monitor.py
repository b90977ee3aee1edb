"""What the dashboard knows: events folded into a :class:`State`, and the workers' own answers.

Two background threads feed one :class:`Monitor`:

* the receiver follows the broker's ``events`` channel from the start of what it
  keeps (so a dashboard started late still sees recent history) and folds each
  event into :class:`~chard.events.state.State` and the :class:`Metrics`;
* the inspector asks the workers (``inspect stats``, ``active_queues``, ``active``)
  every ``inspect_interval`` seconds, and switches task events on once at each
  node process that answers (as Flower does), so a worker started without ``-E``
  shows its tasks too; worker events (online, heartbeats) flow without ``-E``.

Readers (the HTTP handlers) take :attr:`Monitor.lock` only to copy: no request
waits on the broker while holding it. :attr:`Monitor.version` grows with every
change, which the live stream (server-sent events) watches.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from chard.beat.store import ScheduleStore
from chard.beat.stores import open_schedule_store
from chard.dashboard.history import History, decode, encode
from chard.dashboard.metrics import Metrics
from chard.events.state import State
from chard.exceptions import ChardError
from chard.protocol.events import Event

if TYPE_CHECKING:
    from chard.app import Celery
    from chard.events.receiver import EventReceiver

logger = logging.getLogger(__name__)

#: Seconds a control or inspect request waits for the workers' replies.
REPLY_TIMEOUT = 1.0
#: Longest pause between two attempts to reach a broker that is down (seconds).
MAX_BACKOFF = 30.0
#: Seconds between two writes of changed tasks to the history, and between two trims.
SAVE_INTERVAL = 1.0
TRIM_INTERVAL = 60.0


class Monitor:
    """The cluster as the dashboard sees it; see the module docstring.

    Args:
        app: the app whose broker carries the events and the control channel.
        max_tasks: tasks kept in memory (the least recently changed go first).
        inspect_interval: seconds between two rounds of questions to the workers.
        enable_events: switch events on at workers that send none.
        history: where tasks are persisted (None: memory only).
        history_days: records older than this many days are trimmed (None: by count only).
        clock: the time (``time.time``), a parameter for tests.
    """

    def __init__(
        self,
        app: Celery,
        *,
        max_tasks: int = 100_000,
        inspect_interval: float = 5.0,
        enable_events: bool = True,
        history: History | None = None,
        history_days: float | None = 7.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.app = app
        self.state = State(max_tasks=max_tasks)
        self.metrics = Metrics()
        self.lock = threading.Lock()
        #: Grows with every change; the live stream sends an update when it moves.
        self.version = 0
        #: hostname -> ``{"stats": ..., "queues": [...], "active": [...], "seen": time}``.
        self.nodes: dict[str, dict[str, Any]] = {}
        self.inspect_interval = inspect_interval
        self.enable_events = enable_events
        self.clock = clock
        self.history = history
        self.history_days = history_days
        #: Task ids changed since the last save to the history.
        self._dirty: set[str] = set()
        #: Task id -> newest event time it was restored with: older events are not folded again.
        self._restored: dict[str, float] = {}
        self._schedule: ScheduleStore | None = None
        #: hostname -> the pid whose task events this dashboard switched on.
        self._switched_on: dict[str, Any] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._receiver: EventReceiver | None = None
        self._threads: list[threading.Thread] = []

    # -- running ----------------------------------------------------------------
    def start(self) -> None:
        """Load the history, then start the threads (daemons: they never hold up an exit)."""
        loops = [(self._receive, "receiver"), (self._inspect_loop, "inspector")]
        if self.history is not None:
            self.restore()
            loops.append((self._keep_loop, "history"))
        for target, name in loops:
            thread = threading.Thread(target=target, name=f"dashboard-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop both threads, waiting a little for each."""
        self._stop.set()
        self._wake.set()
        if self._receiver is not None:
            self._receiver.should_stop = True
        for thread in self._threads:
            thread.join(timeout=5)
        if self.history is not None:
            self.save()
            self.history.close()

    def refresh_soon(self) -> None:
        """Ask the workers again now (after an action), not at the next interval."""
        self._wake.set()

    def on_event(self, event: Event) -> None:
        """Fold one event into the state and the metrics (unless restored already)."""
        uuid = event.get("uuid")
        with self.lock:
            restored = self._restored.get(uuid) if isinstance(uuid, str) else None
            if restored is not None and float(event.get("timestamp") or 0) <= restored:
                return  # in the history already: folding it again would repeat it
            self.state.event(event)
            self.metrics.observe(event, self.state)
            self.version += 1
            if isinstance(uuid, str) and self.history is not None:
                self._dirty.add(uuid)

    # -- history ----------------------------------------------------------------
    def restore(self) -> int:
        """Load the newest ``max_tasks`` tasks from the history; return how many."""
        assert self.history is not None
        records = self.history.load(self.state.max_tasks)
        with self.lock:
            for uuid, text in records:
                task = decode(uuid, text)
                if task is None:
                    continue
                self.state.adopt(task)
                newest = task.timeline[-1][1] if task.timeline else 0.0
                self._restored[uuid] = newest
            self.version += 1
        logger.info("Dashboard history: %d task(s) restored", len(records))
        return len(records)

    def save(self) -> int:
        """Write the tasks changed since the last save; return how many."""
        assert self.history is not None
        with self.lock:
            dirty, self._dirty = self._dirty, set()
            records = [encode(self.state.tasks[u]) for u in dirty if u in self.state.tasks]
        if records:
            try:
                self.history.save(records)
            except ChardError:
                with self.lock:  # try them again next time
                    self._dirty.update(u for u, _, _ in records)
                raise
        return len(records)

    def _keep_loop(self) -> None:
        assert self.history is not None
        next_trim = 0.0
        while not self._stop.wait(SAVE_INTERVAL):
            try:
                self.save()
                if time.monotonic() >= next_trim:
                    next_trim = time.monotonic() + TRIM_INTERVAL
                    days = self.history_days
                    older = None if days is None else self.clock() - days * 86400
                    self.history.trim(self.state.max_tasks, older)
            except ChardError as exc:
                logger.warning("Cannot write the dashboard history: %s", exc)

    def _receive(self) -> None:
        pause = 1.0
        from_start = True
        while not self._stop.is_set():
            try:
                self._receiver = self.app.events.Receiver(
                    handlers={"*": self.on_event}, from_start=from_start
                )
                from_start = False  # after a reconnection, only what is new
                if self._stop.is_set():
                    return
                self._receiver.capture()
                pause = 1.0
            except ChardError as exc:
                logger.warning("Cannot read events: %s. Trying again in %.0fs", exc, pause)
                self._stop.wait(pause)
                pause = min(pause * 2, MAX_BACKOFF)

    def _inspect_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.inspect_once()
            except ChardError as exc:
                logger.warning("Cannot ask the workers: %s", exc)
            self._wake.wait(self.inspect_interval)
            self._wake.clear()

    def inspect_once(self) -> None:
        """Ask every worker for its stats, queues and active tasks; remember the answers."""
        inspect = self.app.control.inspect(timeout=REPLY_TIMEOUT)
        stats = inspect.stats() or {}
        queues = inspect.active_queues() or {}
        active = inspect.active() or {}
        now = self.clock()
        with self.lock:
            for name, reply in stats.items():
                node = self.nodes.setdefault(name, {})
                node["stats"] = reply
                node["queues"] = [q.get("name") for q in queues.get(name) or []]
                node["active"] = active.get(name) or []
                node["seen"] = now
            self.version += 1
            # Worker events flow without -E; task events need switching on, once per
            # process (a restarted node has a new pid). A node an operator switched off
            # afterwards stays off: unlike Flower, the dashboard does not insist.
            new = {name: reply.get("pid") for name, reply in stats.items()}
            switch_on = [name for name, pid in new.items() if self._switched_on.get(name) != pid]
        if switch_on and self.enable_events:
            replies = self.app.control.enable_events(
                destination=switch_on, reply=True, timeout=REPLY_TIMEOUT
            )
            confirmed = {name for reply in replies or () for name in reply}
            with self.lock:
                for name in confirmed & set(switch_on):
                    self._switched_on[name] = new[name]
                    self.nodes[name]["task_events"] = True
                self.version += 1

    # -- reading ----------------------------------------------------------------
    def schedule_store(self) -> ScheduleStore:
        """Return beat's schedule store in the broker (opened on first use).

        Raises:
            ImproperlyConfigured: the broker's kind has no schedule store.
        """
        with self.lock:
            if self._schedule is None:
                self._schedule = open_schedule_store(self.app)
            return self._schedule

    def node_is_answering(self, hostname: str, now: float) -> bool:
        """Return whether ``hostname`` answered the inspector lately (two intervals)."""
        node = self.nodes.get(hostname)
        seen = node.get("seen") if node else None
        return seen is not None and now - seen <= 2 * self.inspect_interval + 2 * REPLY_TIMEOUT

    def known_queues(self) -> list[str]:
        """Return the queue names known: the default, configured, consumed and seen ones."""
        conf = self.app.conf
        names = {str(conf.task_default_queue)}
        configured = conf.peek("task_queues") or ()
        names.update(str(getattr(q, "name", q)) for q in configured)
        with self.lock:
            for node in self.nodes.values():
                names.update(str(q) for q in node.get("queues") or () if q)
            for task in self.state.tasks.values():
                queue = task.extra.get("queue")
                if isinstance(queue, str):
                    names.add(queue)
        return sorted(names)
