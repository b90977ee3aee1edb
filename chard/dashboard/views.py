"""The dashboard's answers as JSON-able dicts, and its actions; no HTTP here.

Each function takes the :class:`~chard.dashboard.monitor.Monitor` and plain
arguments, and returns what the API sends, so the HTTP layer (:mod:`.api`) only
parses requests. Bad input raises :class:`ApiError` with the status and a one-line
message that names the value and the fix.
"""

from __future__ import annotations

import ast
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from chard import states
from chard.brokers import deadletters
from chard.dashboard import charts, graph, query
from chard.dashboard.query import Found
from chard.events.state import TaskState
from chard.exceptions import ChardError

if TYPE_CHECKING:
    from chard.dashboard.monitor import Monitor

#: Most tasks one page of the list holds.
MAX_PAGE = 500
#: Most dead letters and delayed messages listed.
MAX_LISTED = 1_000
KNOWN_STATES = frozenset((*states.ALL_STATES, states.RECEIVED, states.REJECTED))


class ApiError(Exception):
    """A request the dashboard cannot serve: ``status`` and a message for the page."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# -- workers ------------------------------------------------------------------------
def workers(monitor: Monitor) -> list[dict[str, Any]]:
    """Every worker known from events or replies, with what each source tells."""
    with monitor.lock:
        return workers_unlocked(monitor, monitor.clock())


def workers_unlocked(monitor: Monitor, now: float) -> list[dict[str, Any]]:
    """:func:`workers`, for a caller that holds ``monitor.lock``."""
    names = sorted({*monitor.state.workers, *monitor.nodes})
    failed = Counter(t.worker for t in monitor.state.tasks.values() if t.state == states.FAILURE)
    return [_worker_row(monitor, name, now, failed.get(name, 0)) for name in names]


def online_count(monitor: Monitor, now: float) -> int:
    """How many workers are online, for a caller that holds ``monitor.lock``."""
    names = {*monitor.state.workers, *monitor.nodes}
    return sum(1 for name in names if _is_online(monitor, name, now))


def _is_online(monitor: Monitor, name: str, now: float) -> bool:
    events = monitor.state.workers.get(name)
    alive = events is not None and events.is_alive(now)
    return alive or monitor.node_is_answering(name, now)


def _worker_row(monitor: Monitor, name: str, now: float, failed: int) -> dict[str, Any]:
    events = monitor.state.workers.get(name)
    node = monitor.nodes.get(name) or {}
    stats = node.get("stats") or {}
    pool = stats.get("pool") or {}
    online = _is_online(monitor, name, now)
    total = stats.get("total")
    processed = sum(total.values()) if isinstance(total, dict) else None
    if processed is None and events is not None:
        processed = events.processed
    active = node.get("active")
    return {
        "hostname": name,
        "status": "ONLINE" if online else "OFFLINE",
        "pool": pool.get("implementation"),
        "concurrency": pool.get("max-concurrency"),
        "processes": pool.get("processes"),
        "processed": processed,
        "failed": failed,
        "active": len(active) if isinstance(active, list) else (events and events.active),
        "active_tasks": active if isinstance(active, list) else [],
        "queues": node.get("queues") or [],
        "heartbeat_age": events.heartbeat_age(now) if events is not None else None,
        "task_events": node.get("task_events"),
        "loadavg": events.loadavg if events is not None else None,
        "uptime": stats.get("uptime"),
        "pid": stats.get("pid") or (events.pid if events is not None else None),
        "sw_ver": events.sw_ver if events is not None else None,
    }


@dataclass(frozen=True)
class WorkerAction:
    """One remote-control action: the ``app.control`` method and its arguments, by name."""

    method: str
    params: tuple[tuple[str, type], ...] = ()


WORKER_ACTIONS = {
    "shutdown": WorkerAction("shutdown"),
    "pool_grow": WorkerAction("pool_grow", (("n", int),)),
    "pool_shrink": WorkerAction("pool_shrink", (("n", int),)),
    "autoscale": WorkerAction("autoscale", (("max", int), ("min", int))),
    "rate_limit": WorkerAction("rate_limit", (("task_name", str), ("rate_limit", str))),
    "add_consumer": WorkerAction("add_consumer", (("queue", str),)),
    "cancel_consumer": WorkerAction("cancel_consumer", (("queue", str),)),
}


def worker_action(
    monitor: Monitor, hostname: str, action: str, body: dict[str, Any], timeout: float
) -> dict[str, Any]:
    """Send ``action`` to worker ``hostname``; return its reply (404 if it did not answer)."""
    spec = WORKER_ACTIONS.get(action)
    if spec is None:
        raise ApiError(404, f"no worker action {action!r}; one of {', '.join(WORKER_ACTIONS)}")
    args: list[Any] = []
    for name, kind in spec.params:
        value = body.get(name)
        if kind is int:
            if isinstance(value, str) and value.strip().lstrip("-").isdigit():
                value = int(value)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ApiError(400, f"{action}: {name!r} must be a whole number, got {value!r}")
        elif not isinstance(value, str) or not value:
            raise ApiError(400, f"{action}: {name!r} must be a non-empty string, got {value!r}")
        args.append(value)
    if action == "autoscale":
        args = [args[0], args[1]]
    method = getattr(monitor.app.control, spec.method)
    try:
        replies = method(*args, destination=[hostname], reply=True, timeout=timeout)
    except ChardError as exc:
        raise ApiError(503, f"cannot reach the broker: {exc}") from exc
    monitor.refresh_soon()
    for reply in replies or ():
        if hostname in reply:
            answer = reply[hostname]
            return {"worker": hostname, "reply": answer, "ok": "error" not in answer}
    raise ApiError(
        404,
        f"worker {hostname!r} did not answer within {timeout:g}s: it may have stopped "
        "(see its status in the workers list)",
    )


# -- tasks --------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskFilter(query.TaskFilter):
    """The list's filter (:class:`.query.TaskFilter`), checked before it is run."""

    def check(self) -> None:
        """Raise :class:`ApiError` (400) for a filter that cannot match by construction."""
        if self.state is not None and self.state not in KNOWN_STATES:
            raise ApiError(
                400, f"state={self.state!r} is not a task state; one of {_states_listed()}"
            )
        for name in ("name", "worker", "id", "search"):
            if "\x00" in (getattr(self, name) or ""):
                raise ApiError(400, f"{name} contains a NUL character; remove it")


def _states_listed() -> str:
    return ", ".join(sorted(KNOWN_STATES))


def tasks(monitor: Monitor, where: TaskFilter, offset: int, limit: int) -> dict[str, Any]:
    """One page of the tasks matching ``where``, the most recently changed first.

    With a history store, the whole store is searched (not only what memory keeps);
    without one, the kept tasks are.
    """
    where.check()
    if offset < 0 or not 1 <= limit <= MAX_PAGE:
        raise ApiError(400, f"offset must be >= 0 and limit 1..{MAX_PAGE}; got {offset}, {limit}")
    try:
        found = monitor.search(where, offset, limit)
    except ChardError as exc:
        raise ApiError(503, f"cannot search the dashboard history: {exc}") from exc
    if found is None:
        found = _search_memory(monitor, where, offset, limit)
    page = [_task_row(task) for task in found.tasks]
    return {
        "total": found.total,
        "exact": found.exact,
        "offset": offset,
        "limit": limit,
        "tasks": page,
        "names": found.names,
        "counts": found.counts,
        "source": "memory" if monitor.history is None else "history",
    }


def _search_memory(monitor: Monitor, where: TaskFilter, offset: int, limit: int) -> Found:
    """:meth:`History.search` over the tasks kept in memory."""
    end = offset + limit
    found = Found(total=0, tasks=[])
    with monitor.lock:
        kept = monitor.state.tasks.values()
        everything = where.is_empty()
        for task in reversed(kept):
            if everything or where.matches(task):
                if offset <= found.total < end:
                    found.tasks.append(task)
                found.total += 1
                if everything and found.total >= end:
                    found.total = len(kept)
                    break
        found.names = sorted({t.name for t in kept if t.name})
        found.counts = dict(Counter(t.state for t in kept))
    return found


def _task_row(task: TaskState) -> dict[str, Any]:
    return {
        "id": task.uuid,
        "name": task.name,
        "state": task.state,
        "worker": task.worker,
        "args": task.args,
        "kwargs": task.kwargs,
        "runtime": task.runtime,
        "timestamp": task.timestamp,
        "received": task.when("task-received"),
        "retries": task.retries,
    }


def task(monitor: Monitor, task_id: str) -> dict[str, Any]:
    """A task's page: its fields, timeline, workflow links and graph (:mod:`.graph`).

    A task memory no longer keeps is read from the history, and so is its workflow
    where the store can query links (SQLite); children are those the graph holds.
    """
    try:
        found = monitor.find(task_id)
    except ChardError as exc:
        raise ApiError(503, f"cannot read the dashboard history: {exc}") from exc
    if found is None:
        raise ApiError(404, f"no task {task_id!r} is kept (unknown, or forgotten as old)")
    try:
        flow = monitor.workflow(found)
    except ChardError as exc:
        raise ApiError(503, f"cannot read the dashboard history: {exc}") from exc
    children = [t.uuid for t in flow if t.parent_id == task_id]
    drawing = graph.layout(flow, task_id, cut=len(flow) >= graph.MAX_NODES)
    with monitor.lock:
        row = {
            **_task_row(found),
            "result": found.result,
            "exception": found.exception,
            "traceback": found.traceback,
            "eta": found.eta,
            "expires": found.expires,
            "root_id": found.root_id,
            "parent_id": found.parent_id,
            "children": children,
            "graph": drawing,
            "timeline": [{"event": kind, "timestamp": stamp} for kind, stamp in found.timeline],
            "extra": {k: v for k, v in found.extra.items() if _is_plain(v)},
        }
    return row


def _is_plain(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def revoke(monitor: Monitor, task_id: str, terminate: bool, signal: str) -> dict[str, Any]:
    """Revoke a task at every worker (``terminate``: also kill it if running)."""
    try:
        monitor.app.control.revoke(task_id, terminate=terminate, signal=signal)
    except ChardError as exc:
        raise ApiError(503, f"cannot reach the broker: {exc}") from exc
    return {"id": task_id, "revoked": True, "terminate": terminate}


def retry(monitor: Monitor, task_id: str) -> dict[str, Any]:
    """Send a kept task again under a new id, with its arguments as its events showed them.

    Events carry arguments as ``repr()`` text, so a task whose arguments are not
    Python literals (objects, or cut short by ``argsrepr``'s limit) cannot be sent again.
    """
    try:
        found = monitor.find(task_id)
    except ChardError as exc:
        raise ApiError(503, f"cannot read the dashboard history: {exc}") from exc
    name, args_text, kwargs_text = (
        (found.name, found.args, found.kwargs) if found else (None, None, None)
    )
    if found is None or not name:
        raise ApiError(404, f"no task {task_id!r} with a known name is kept; cannot send it again")
    try:
        args = ast.literal_eval(args_text) if args_text else ()
        kwargs = ast.literal_eval(kwargs_text) if kwargs_text else {}
    except (ValueError, SyntaxError) as exc:
        raise ApiError(
            400, f"the arguments of {task_id} are not Python literals ({args_text!r}); "
            "send it again from code",
        ) from exc  # fmt: skip
    if not isinstance(args, list | tuple) or not isinstance(kwargs, dict):
        raise ApiError(
            400, f"the arguments of {task_id} are not a list and a dict; send it from code"
        )
    try:
        sent = monitor.app.send_task(name, args=args, kwargs=kwargs)
    except ChardError as exc:
        raise ApiError(503, f"cannot send {name}: {exc}") from exc
    return {"id": sent.id, "name": name, "retry_of": task_id}


def chart(monitor: Monitor, span: float, step: float) -> dict[str, Any]:
    """Successes, failures and runtime percentiles per ``step`` over the last ``span`` s.

    A step too fine for the span is widened to give at most ``charts.MAX_BUCKETS``
    buckets, and one wider than the span is narrowed to it; the answer says which.
    """
    if not (0 < span <= charts.MAX_SPAN and step > 0):
        raise ApiError(
            400, f"span={span:g} must be in (0, {charts.MAX_SPAN:g}] seconds and step={step:g} "
            "positive",
        )  # fmt: skip
    step = min(span, max(step, span / charts.MAX_BUCKETS))
    now = monitor.clock()
    with monitor.lock:
        kept = list(monitor.state.tasks.values())
    return {"step": step, "buckets": charts.throughput(kept, now, span, step)}


# -- beat ---------------------------------------------------------------------------
def beat(monitor: Monitor) -> dict[str, Any]:
    """Beat's schedule: every entry with its last and next run, and the leader now."""
    try:
        store = monitor.schedule_store()
        rows, errors = store.describe(monitor.app, datetime.now(UTC))
        holder = store.lease_holder()
    except ChardError as exc:
        raise ApiError(503, f"cannot read beat's schedule: {exc}") from exc
    leader = {"owner": holder.owner, "expires_in": holder.expires_in} if holder else None
    return {"leader": leader, "entries": rows, "errors": errors}


def beat_toggle(monitor: Monitor, name: str, action: str) -> dict[str, Any]:
    """Enable or disable schedule entry ``name``; running beats pick it up within seconds."""
    if action not in ("enable", "disable"):
        raise ApiError(404, f"no beat action {action!r}; enable or disable")
    try:
        found = monitor.schedule_store().set_enabled(name, action == "enable")
    except ChardError as exc:
        raise ApiError(503, f"cannot change beat's schedule: {exc}") from exc
    if not found:
        raise ApiError(404, f"no schedule entry {name!r} (see the beat view)")
    return {"name": name, "enabled": action == "enable"}


# -- queues -------------------------------------------------------------------------
def queues(monitor: Monitor) -> dict[str, Any]:
    """Length of each known queue, the dead letters, and the delayed (countdown/ETA) set."""
    broker = monitor.app.broker
    names = monitor.known_queues()
    try:
        lengths = {name: broker.queue_size(name) for name in names}
        letters = [deadletters.describe(d) for d in broker.dead_letters(MAX_LISTED)]
        try:
            delayed = [deadletters.describe_delayed(m) for m in broker.delayed(names, MAX_LISTED)]
        except NotImplementedError:
            delayed = []
    except ChardError as exc:
        raise ApiError(503, f"cannot reach the broker: {exc}") from exc
    return {
        "queues": [{"name": n, "length": lengths[n]} for n in names],
        "dead_letters": letters,
        "delayed": delayed,
    }


def redrive(monitor: Monitor, ids: list[str] | None) -> dict[str, Any]:
    """Re-drive dead letters ``ids`` (None: all) to their queues."""
    try:
        moved, unknown = deadletters.redrive(monitor.app.broker, ids)
    except ChardError as exc:
        raise ApiError(503, f"cannot reach the broker: {exc}") from exc
    if unknown:
        raise ApiError(
            404, f"no dead letter with id {', '.join(unknown)} (already re-driven?); "
            f"{len(moved)} other(s) re-driven",
        )  # fmt: skip
    return {"redriven": [letter.id for letter in moved]}
