"""The cluster as events tell it: workers, tasks by state, each task's timeline.

:class:`State` folds events into memory and does nothing else: no I/O, no clock
of its own (methods that need the time take ``now``), so the terminal view, a
dashboard or a test feed it the same way (``state.event(e)`` from any receiver).
Memory is bounded: at most ``max_tasks`` tasks (the least recently changed go
first), ``max_workers`` workers, and :data:`MAX_TIMELINE` entries per task.

Celery's rules where they matter to readers: a task's state follows its events
(``task-received`` is RECEIVED, ``task-succeeded`` SUCCESS...), except that an
event arriving late (``task-received`` after ``task-started``) does not move it
back, though it still fills the fields only it carries (name, args...); a worker
is alive while its last heartbeat is younger than twice its ``freq``, and
``worker-offline`` ends it at once.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from chard import states
from chard.protocol.events import Event

#: Most tasks kept; the least recently changed are forgotten first.
MAX_TASKS = 10_000
#: Most workers kept; the least recently heard from are forgotten first.
MAX_WORKERS = 1_000
#: Most timeline entries kept per task (a task retried forever keeps its newest).
MAX_TIMELINE = 50
#: A worker is alive while its last heartbeat is younger than this many ``freq``s
#: (Celery's ``HEARTBEAT_EXPIRE_WINDOW`` of 200%).
EXPIRE_WINDOW = 2.0
#: Seconds of finished tasks that :meth:`State.rate` looks back over, at most.
RATE_WINDOW = 60.0

#: Task event type -> the state it means (Celery's ``TASK_EVENT_TO_STATE``).
TASK_EVENT_STATES = {
    "task-sent": states.PENDING,
    "task-received": states.RECEIVED,
    "task-started": states.STARTED,
    "task-succeeded": states.SUCCESS,
    "task-failed": states.FAILURE,
    "task-retried": states.RETRY,
    "task-revoked": states.REVOKED,
    "task-rejected": states.REJECTED,
}
#: Fields a late event still contributes (Celery's ``merge_rules``).
_MERGED_LATE = frozenset(
    ("name", "args", "kwargs", "parent_id", "root_id", "retries", "eta", "expires")
)
#: Fields of an event that are about the event, not the task.
_ENVELOPE = frozenset(("type", "hostname", "timestamp", "utcoffset", "pid", "clock", "uuid"))
_WORKER_FIELDS = ("pid", "freq", "active", "processed", "loadavg", "sw_ident", "sw_ver", "sw_sys")


@dataclass
class WorkerState:
    """One worker node, as its events tell it."""

    hostname: str
    pid: int | None = None
    #: Seconds between its heartbeats.
    freq: float = 2.0
    #: Receipt time of its newest online/heartbeat event (None before any).
    last_heartbeat: float | None = None
    #: Set by ``worker-offline``, cleared by its next online/heartbeat.
    is_offline: bool = False
    active: int | None = None
    processed: int | None = None
    loadavg: list[float] | None = None
    sw_ident: str | None = None
    sw_ver: str | None = None
    sw_sys: str | None = None

    def is_alive(self, now: float) -> bool:
        """Return whether it is online at ``now``: heartbeats fresh, not gone offline."""
        if self.is_offline or self.last_heartbeat is None:
            return False
        return now < self.last_heartbeat + self.freq * EXPIRE_WINDOW

    def heartbeat_age(self, now: float) -> float | None:
        """Seconds since its newest heartbeat, or None before any."""
        return None if self.last_heartbeat is None else max(0.0, now - self.last_heartbeat)

    def status(self, now: float) -> str:
        """``ONLINE`` or ``OFFLINE``, as Celery's ``status_string``."""
        return "ONLINE" if self.is_alive(now) else "OFFLINE"


@dataclass
class TaskState:
    """One task, as its events tell it; ``timeline`` lists ``(event type, timestamp)``."""

    uuid: str
    name: str | None = None
    state: str = states.PENDING
    #: The worker that received or ran it.
    worker: str | None = None
    args: str | None = None
    kwargs: str | None = None
    result: str | None = None
    exception: str | None = None
    traceback: str | None = None
    runtime: float | None = None
    retries: int | None = None
    eta: str | None = None
    expires: str | None = None
    root_id: str | None = None
    parent_id: str | None = None
    #: Timestamp of the event that set the current state.
    timestamp: float | None = None
    timeline: deque[tuple[str, float]] = field(default_factory=lambda: deque(maxlen=MAX_TIMELINE))
    #: Fields of its events not named above (``queue``, ``requeue``, ``signum``...).
    extra: dict[str, Any] = field(default_factory=dict)

    def when(self, type_: str) -> float | None:
        """Return the timestamp of this task's newest ``type_`` event (``task-started``...)."""
        for kind, stamp in reversed(self.timeline):
            if kind == type_:
                return stamp
        return None

    def info(self) -> dict[str, Any]:
        """Return its set fields for display (Celery's ``Task.info()``)."""
        shown = (
            "name", "state", "worker", "args", "kwargs", "retries", "result", "runtime",
            "eta", "expires", "exception", "root_id", "parent_id",
        )  # fmt: skip
        found = {key: getattr(self, key) for key in shown if getattr(self, key) is not None}
        return {**found, **self.extra}


class State:
    """The cluster folded from events; see the module docstring.

    Args:
        max_tasks: most tasks kept (least recently changed forgotten first).
        max_workers: most workers kept.
    """

    def __init__(self, max_tasks: int = MAX_TASKS, max_workers: int = MAX_WORKERS) -> None:
        self.max_tasks = max_tasks
        self.max_workers = max_workers
        self.workers: OrderedDict[str, WorkerState] = OrderedDict()
        self.tasks: OrderedDict[str, TaskState] = OrderedDict()
        self.event_count = 0
        self.task_count = 0  # task events seen
        self._finished: deque[float] = deque(maxlen=100_000)  # timestamps of ends, for rate()

    # -- folding --------------------------------------------------------------
    def event(self, event: Event) -> None:
        """Fold one event in. Unknown types count and are otherwise ignored."""
        self.event_count += 1
        type_ = str(event.get("type", ""))
        if type_.startswith("worker-"):
            self._worker_event(type_, event)
        elif type_.startswith("task-"):
            self.task_count += 1
            self._task_event(type_, event)

    def feed(self, events: Iterable[Event]) -> None:
        """Fold several events in, in order."""
        for event in events:
            self.event(event)

    def adopt(self, task: TaskState) -> None:
        """Keep ``task`` (restored from storage) as the most recently changed one."""
        self.tasks[task.uuid] = task
        self.tasks.move_to_end(task.uuid)
        while len(self.tasks) > self.max_tasks:
            self.tasks.popitem(last=False)

    def _worker(self, hostname: str) -> WorkerState:
        worker = self.workers.get(hostname)
        if worker is None:
            worker = self.workers[hostname] = WorkerState(hostname)
            while len(self.workers) > self.max_workers:
                self.workers.popitem(last=False)
        else:
            self.workers.move_to_end(hostname)
        return worker

    def _worker_event(self, type_: str, event: Event) -> None:
        worker = self._worker(str(event["hostname"]))
        for name in _WORKER_FIELDS:
            if name in event:
                setattr(worker, name, event[name])
        if type_ == "worker-offline":
            worker.is_offline = True
        else:
            worker.is_offline = False
            worker.last_heartbeat = float(event.get("local_received") or event["timestamp"])

    def _task_event(self, type_: str, event: Event) -> None:
        uuid = event.get("uuid")
        if not isinstance(uuid, str):
            return
        task = self.tasks.get(uuid)
        if task is None:
            task = self.tasks[uuid] = TaskState(uuid)
            while len(self.tasks) > self.max_tasks:
                self.tasks.popitem(last=False)
        else:
            self.tasks.move_to_end(uuid)
        stamp = float(event["timestamp"])
        task.timeline.append((type_, stamp))
        if type_ != "task-sent":  # the client's, not a worker's
            task.worker = str(event["hostname"])
            self._worker(task.worker)
        state = TASK_EVENT_STATES.get(type_, type_.removeprefix("task-").upper())
        is_late = (
            state != states.RETRY
            and task.state != states.RETRY
            and states.precedence(state) > states.precedence(task.state)
        )
        fields = {k: v for k, v in event.items() if k not in _ENVELOPE and k != "local_received"}
        if is_late:  # it happened before the current state: only fill what it alone carries
            fields = {k: v for k, v in fields.items() if k in _MERGED_LATE}
        else:
            task.state, task.timestamp = state, stamp
        for key, value in fields.items():
            if key in _TASK_ATTRS:
                setattr(task, key, value)
            else:
                task.extra[key] = value
        if state in states.READY_STATES and not is_late:
            self._finished.append(stamp)

    # -- reading --------------------------------------------------------------
    def alive_workers(self, now: float) -> list[WorkerState]:
        """Return the workers online at ``now``."""
        return [w for w in self.workers.values() if w.is_alive(now)]

    def tasks_by_state(self) -> dict[str, list[TaskState]]:
        """Return the kept tasks grouped by state, newest change first in each."""
        grouped: dict[str, list[TaskState]] = {}
        for task in reversed(self.tasks.values()):
            grouped.setdefault(task.state, []).append(task)
        return grouped

    def counts_by_state(self) -> dict[str, int]:
        """Return how many kept tasks are in each state."""
        return {state: len(tasks) for state, tasks in self.tasks_by_state().items()}

    def tasks_by_time(self, limit: int | None = None) -> list[TaskState]:
        """Return the kept tasks, the most recently changed first."""
        found: list[TaskState] = []
        for task in reversed(self.tasks.values()):
            if limit is not None and len(found) >= limit:
                break
            found.append(task)
        return found

    def task_types(self) -> list[str]:
        """Return the names of the tasks seen, sorted."""
        return sorted({t.name for t in self.tasks.values() if t.name})

    def rate(self, now: float, window: float = 10.0) -> float:
        """Return tasks finished per second over the ``window`` seconds before ``now``."""
        window = min(window, RATE_WINDOW)
        since = now - window
        count = 0
        for stamp in reversed(self._finished):
            if stamp < since:
                break
            if stamp <= now:
                count += 1
        return count / window if window > 0 else 0.0

    def __repr__(self) -> str:
        return f"<State: events={self.event_count} tasks={len(self.tasks)}>"


_TASK_ATTRS = frozenset(
    name for name in TaskState.__dataclass_fields__ if name not in ("uuid", "timeline", "extra")
) - {"state", "timestamp", "worker"}
