"""The remote control commands a node answers: one small typed function each.

A command is registered by :func:`inspect_command` (no side effects) or
:func:`control_command`; its name is the function's, its help line the first line of
its docstring, and its keyword arguments are what a client sends
(``app.control.broadcast(name, arguments={...})``). It gets the :class:`Node` and
returns the reply in Celery's shape: ``{"ok": ...}``, ``{"error": ...}``, or the
inspected value. Arguments a command does not take are ignored (Celery clients send
some chard has no use for, such as ``add_consumer``'s ``exchange``). The mailbox
(:mod:`chard.worker.mailbox`) turns an exception into an error reply and a log line.

``chard inspect`` and ``chard control`` list and parse commands from this registry:
``args`` names and types the positional command-line arguments, ``variadic`` the
one that takes all the rest. So a new command is one decorated function here.
"""

from __future__ import annotations

import inspect
import logging
import os
import platform
import resource
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from chard import __version__
from chard._utils.log import redact_url
from chard.exceptions import ChardError
from chard.protocol.control import parse_rate
from chard.protocol.message import TaskMessage
from chard.worker.node import Node
from chard.worker.process_control import task_info

logger = logging.getLogger("chard.worker")

#: What a command returns: JSON values.
Reply = Any
Kind = Literal["inspect", "control"]
#: Most countdown/ETA messages ``inspect scheduled`` lists per node.
SCHEDULED_LIMIT = 100
#: Task attributes ``registered`` shows by default, when set (Celery's).
DEFAULT_TASK_INFO_ITEMS = ("exchange", "routing_key", "rate_limit")


def ok(value: Any) -> dict[str, Any]:
    """Return a success reply: ``{"ok": value}``."""
    return {"ok": value}


def error(value: Any) -> dict[str, Any]:
    """Return a failure reply: ``{"error": value}``."""
    return {"error": value}


def to_bool(value: str) -> bool:
    """Parse a command-line flag (``true``/``false``, ``1``/``0``, ``yes``/``no``)."""
    text = value.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {value!r}; use true or false")


def checked_rate(value: str) -> str:
    """Return a command-line rate limit unchanged once it parses (``'10/x'`` raises ValueError)."""
    parse_rate(value)
    return value


@dataclass(frozen=True)
class Command:
    """One registered command; see the module docstring."""

    name: str
    kind: Kind
    run: Callable[..., Reply]
    #: One line for ``--help``.
    help: str
    #: Positional command-line arguments, in order: (argument name, parser).
    args: tuple[tuple[str, Callable[[str], Any]], ...] = ()
    #: The argument that takes the remaining command-line arguments, as a list.
    variadic: str | None = None
    #: How its command-line arguments read (``<task_name> <rate_limit>``).
    signature: str = ""

    def call(self, node: Node, arguments: dict[str, Any]) -> Reply:
        """Run with the ``arguments`` this command takes (others are ignored).

        Raises:
            TypeError: a required argument is missing.
        """
        accepted = inspect.signature(self.run).parameters
        return self.run(node, **{k: v for k, v in arguments.items() if k in accepted})


#: Every command, by name.
COMMANDS: dict[str, Command] = {}


def _register(
    kind: Kind,
    args: tuple[tuple[str, Callable[[str], Any]], ...],
    variadic: str | None,
    signature: str,
) -> Callable[[Callable[..., Reply]], Callable[..., Reply]]:
    def register(fn: Callable[..., Reply]) -> Callable[..., Reply]:
        summary = (fn.__doc__ or fn.__name__).strip().splitlines()[0].rstrip(".")
        COMMANDS[fn.__name__] = Command(fn.__name__, kind, fn, summary, args, variadic, signature)
        return fn

    return register


def inspect_command(
    *,
    args: tuple[tuple[str, Callable[[str], Any]], ...] = (),
    variadic: str | None = None,
    signature: str = "",
) -> Callable[[Callable[..., Reply]], Callable[..., Reply]]:
    """Register a command that only reads the node's state (``chard inspect <name>``)."""
    return _register("inspect", args, variadic, signature)


def control_command(
    *,
    args: tuple[tuple[str, Callable[[str], Any]], ...] = (),
    variadic: str | None = None,
    signature: str = "",
) -> Callable[[Callable[..., Reply]], Callable[..., Reply]]:
    """Register a command that changes the node (``chard control <name>``)."""
    return _register("control", args, variadic, signature)


def commands_of(kind: Kind) -> dict[str, Command]:
    """Return the commands of one kind, by name, sorted."""
    return {name: c for name, c in sorted(COMMANDS.items()) if c.kind == kind}


#: The least time given to the node's processes to answer, however close the expiry.
MIN_ANSWER_TIMEOUT = 0.05
#: Commands run one at a time, whichever mailbox (chard's, Celery's pidbox) asked.
_RUNNING = threading.Lock()


def run_command(node: Node, name: str, arguments: dict[str, Any], expires: float | None) -> Reply:
    """Run command ``name`` on ``node``; return its reply (an error reply if it failed).

    The command may wait for the node's processes until most of the time left before the
    request ``expires`` (a Unix time; None: a second) has passed. Never raises.
    """
    command = COMMANDS.get(name)
    if command is None:
        logger.error("Received unknown control command %r", name)
        return error(f"unknown command {name!r}; known commands: {', '.join(sorted(COMMANDS))}")
    logger.debug("Control command %s(%s)", name, arguments)
    left = 1.0 if expires is None else (expires - time.time()) * 0.8
    with _RUNNING:
        node.answer_timeout = max(left, MIN_ANSWER_TIMEOUT)
        try:
            return command.call(node, arguments)
        except Exception as exc:
            logger.exception("Control command %r failed", name)
            return error(f"{type(exc).__name__}: {exc}")


# -- inspect --------------------------------------------------------------------------------------


@inspect_command()
def ping(node: Node) -> Reply:
    """Ping the node: it answers {'ok': 'pong'}."""
    return ok("pong")


def _held(node: Node, which: str, safe: bool) -> list[dict[str, Any]]:
    return [info for answer in node.ask("held", safe=safe) for info in answer.get(which, [])]


@inspect_command()
def active(node: Node, safe: bool = False) -> Reply:
    """List the tasks running now."""
    return _held(node, "active", bool(safe))


@inspect_command()
def reserved(node: Node, safe: bool = False) -> Reply:
    """List the tasks leased ahead (prefetched or rate limited), not running yet."""
    return _held(node, "reserved", bool(safe))


@inspect_command()
def scheduled(node: Node, safe: bool = False) -> Reply:
    """List the countdown/ETA tasks the broker holds for this node's queues."""
    found = []
    for held in node.app.broker.delayed(node.queues, SCHEDULED_LIMIT):
        try:
            message = TaskMessage.from_wire(held.body, node.app.accept_content)
        except ChardError:
            continue
        info = task_info(message, queue=held.queue, hostname=node.hostname, safe=bool(safe))
        eta = datetime.fromtimestamp(held.eta, UTC).isoformat()
        found.append({"eta": eta, "priority": held.priority, "request": info})
    return found


@inspect_command(variadic="taskinfoitems", signature="[attr1 [attr2 [... [attrN]]]]")
def registered(node: Node, taskinfoitems: list[str] | None = None, builtins: bool = False) -> Reply:
    """List the registered tasks (with the attributes asked for, when set)."""
    tasks = node.app.tasks
    names = sorted(tasks) if builtins else tasks.user_tasks()
    items = taskinfoitems or DEFAULT_TASK_INFO_ITEMS
    listed = []
    for name in names:
        task = tasks[name]
        shown = [f"{a}={getattr(task, a)}" for a in items if getattr(task, a, None) is not None]
        listed.append(f"{name} [{' '.join(shown)}]" if shown else name)
    return listed


@inspect_command()
def stats(node: Node) -> Reply:
    """Show the node's statistics: pool, tasks run per name, broker, pid, uptime, rusage."""
    total: dict[str, int] = {}
    for answer in node.ask("totals"):
        for name, count in answer.items():
            total[name] = total.get(name, 0) + count
    conf = node.app.conf
    return {
        "total": total,
        "pid": os.getpid(),
        "clock": "0",
        "uptime": int(time.monotonic() - node.started),
        "pool": {
            "implementation": node.pool,
            "max-concurrency": node.sizing.pool_size(),
            "processes": node.processes.pids(),
            "max-tasks-per-child": node.max_tasks_per_child or "N/A",
            "put-guarded-by-semaphore": False,
            "timeouts": [conf.task_soft_time_limit or 0, conf.task_time_limit or 0],
        },
        "prefetch_count": node.sizing.prefetch_count(),
        "broker": _broker_info(node.app.broker_url),
        "rusage": _rusage(),
    }


def _broker_info(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    return {
        "transport": parts.scheme,
        "hostname": parts.hostname,
        "port": parts.port,
        "virtual_host": parts.path.lstrip("/") or None,
        "userid": parts.username,
        "uri": redact_url(url),
    }


def _rusage() -> dict[str, Any]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    names = ("utime", "stime", "maxrss", "minflt", "majflt", "inblock", "oublock", "nvcsw")
    fields = {name: getattr(usage, f"ru_{name}") for name in names}
    return {**fields, "nivcsw": usage.ru_nivcsw}


@inspect_command()
def active_queues(node: Node) -> Reply:
    """List the queues the node consumes from."""
    return [
        {
            "name": queue,
            "exchange": {"name": queue, "type": "direct"},
            "routing_key": queue,
            "durable": True,
            "exclusive": False,
            "auto_delete": False,
            "no_ack": False,
            "alias": None,
            "bindings": [],
        }
        for queue in node.queues
    ]


@inspect_command()
def revoked(node: Node) -> Reply:
    """List the revoked task ids the node holds (durable: sent within the last 3 hours)."""
    return node.revocations.ids()


@inspect_command(variadic="ids", signature="[id1 [id2 [... [idN]]]]")
def query_task(node: Node, ids: list[str] | str) -> Reply:
    """Show the tasks with these ids that the node holds: active or reserved."""
    wanted = {ids} if isinstance(ids, str) else set(ids)
    found: dict[str, Any] = {}
    for answer in node.ask("held", safe=False):
        for state in ("active", "reserved"):
            for info in answer.get(state, []):
                if info["id"] in wanted:
                    found[info["id"]] = [state, info]
    return found


@inspect_command(args=(("with_defaults", to_bool),), signature="[include_defaults=False]")
def conf(node: Node, with_defaults: bool = False) -> Reply:
    """Show the node's configuration (what differs from the defaults, unless asked)."""
    settings = node.app.conf
    table = dict(settings) if with_defaults else settings.changes()
    return {key: value for key, value in table.items() if not str(key).startswith("__")}


@inspect_command()
def report(node: Node) -> Reply:
    """Show versions, platform and transports, for bug reports."""
    app = node.app
    lines = [
        f"software -> chard:{__version__} python:{platform.python_version()}",
        f"platform -> system:{platform.system()} arch:{platform.machine()} "
        f"imp:{sys.implementation.name}",
        f"loader   -> {app.main}",
        f"settings -> transport:{redact_url(app.broker_url)} "
        f"results:{redact_url(app.backend_url) if app.backend_url else 'disabled'}",
        f"node     -> {node.hostname} pool:{node.pool} concurrency:{node.sizing.pool_size()}",
    ]
    return ok("\n".join(lines))


# -- control --------------------------------------------------------------------------------------


@control_command(variadic="task_id", signature="[id1 [id2 [... [idN]]]]")
def revoke(
    node: Node, task_id: str | list[str], terminate: bool = False, signal: str | None = None
) -> Reply:
    """Revoke tasks by id (durably, for every worker); each node confirms it has them.

    The client appended the revocation to the durable ``revoke`` log before sending
    this, so the node only waits (briefly) until its record holds the ids.
    """
    ids = [task_id] if isinstance(task_id, str) else [str(i) for i in task_id]
    deadline = time.monotonic() + node.answer_timeout
    while not all(node.revocations.is_revoked(i) for i in ids):
        if time.monotonic() >= deadline:
            return error("revocation not read yet; it is durable and will be honoured")
        time.sleep(0.01)  # the revocation thread reads the log within milliseconds
    return ok(f"tasks {', '.join(ids)} flagged as revoked")


def _set_task_options(node: Node, task_name: str, options: dict[str, Any]) -> bool:
    """Set options of a task in this process (for children forked later) and in each one."""
    task = node.app.tasks.get(task_name)
    if task is None:
        logger.error("Control command for unknown task %s", task_name)
        return False
    for option, value in options.items():
        setattr(task, option, value)
    node.ask("set_task_options", name=task_name, options=options)
    return True


@control_command(
    args=(("task_name", str), ("rate_limit", checked_rate)),
    signature="<task_name> <rate_limit (e.g. 5/s | 5/m | 5/h)>",
)
def rate_limit(node: Node, task_name: str, rate_limit: str | float | None) -> Reply:
    """Set the rate limit of a task type (per node; 0 or empty: none)."""
    try:
        per_second = parse_rate(rate_limit)
    except ValueError as exc:
        return error(f"invalid rate limit string: {exc}")
    if not _set_task_options(node, task_name, {"rate_limit": rate_limit or None}):
        return error("unknown task")
    if not per_second:
        logger.info("Rate limits disabled for tasks of type %s", task_name)
        return ok("rate limit disabled successfully")
    logger.info("New rate limit for tasks of type %s: %s.", task_name, rate_limit)
    return ok("new rate limit set successfully")


@control_command(
    args=(("task_name", str), ("soft", float), ("hard", float)),
    signature="<task_name> <soft_secs> [hard_secs]",
)
def time_limit(
    node: Node, task_name: str, soft: float | None = None, hard: float | None = None
) -> Reply:
    """Set the soft and hard time limits of a task type (seconds)."""
    options = {"soft_time_limit": soft, "time_limit": hard}
    if not _set_task_options(node, task_name, options):
        return error("unknown task")
    logger.info("New time limits for tasks of type %s: soft=%s hard=%s", task_name, soft, hard)
    return ok("time limits set successfully")


@control_command(
    args=(("queue", str), ("exchange", str), ("exchange_type", str), ("routing_key", str)),
    signature="<queue> [exchange [type [routing_key]]]",
)
def add_consumer(node: Node, queue: str) -> Reply:
    """Start consuming from a queue."""
    if queue in node.queues:
        return ok(f"already consuming from {queue}")
    node.queues.append(queue)
    node.ask("set_queues", queues=list(node.queues))
    logger.info("Started consuming from %s", queue)
    return ok(f"add consumer {queue}")


@control_command(args=(("queue", str),), signature="<queue>")
def cancel_consumer(node: Node, queue: str) -> Reply:
    """Stop consuming from a queue."""
    if queue in node.queues:
        node.queues.remove(queue)
        node.ask("set_queues", queues=list(node.queues))
        logger.info("Stopped consuming from %s", queue)
    return ok(f"no longer consuming from {queue}")


@control_command()
def shutdown(node: Node, msg: str = "Got shutdown from remote") -> Reply:
    """Warm-stop the node: running tasks finish, unstarted ones go back to the queue."""
    logger.warning("%s", msg)
    node.stop()
    return ok("shutting down")


# -- events and pool size -------------------------------------------------------------------------
@control_command()
def enable_events(node: Node) -> Reply:
    """Send task and worker events from now on (as ``worker -E``), in every process."""
    if node.events.enabled:
        return ok("task events already enabled")
    node.events.enable()
    logger.info("Events of group {task} enabled by remote.")
    return ok("task events enabled")


@control_command()
def disable_events(node: Node) -> Reply:
    """Stop sending events (one switch: worker heartbeats stop too, unlike Celery)."""
    if not node.events.enabled:
        return ok("task events already disabled")
    node.events.disable()
    logger.info("Events of group {task} disabled by remote.")
    return ok("task events disabled")


@control_command(args=(("n", int),), signature="[N=1]")
def pool_grow(node: Node, n: int = 1) -> Reply:
    """Grow the pool by n processes (threads); under autoscale, raise its floor for now."""
    size = node.sizing.pool_grow(int(n))
    logger.info("Pool grown by %d by remote: now %d", n, size)
    return ok("pool will grow")


@control_command(args=(("n", int),), signature="[N=1]")
def pool_shrink(node: Node, n: int = 1) -> Reply:
    """Shrink the pool by n processes, idle ones first, warmly (one always stays)."""
    size = node.sizing.pool_shrink(int(n))
    logger.info("Pool shrunk by %d by remote: now %d", n, size)
    return ok("pool will shrink")


@control_command(args=(("max", int), ("min", int)), signature="[max [min]]")
def autoscale(node: Node, max: int | None = None, min: int | None = None) -> Reply:
    """Change the autoscale bounds of a node started with --autoscale."""
    high, low = node.sizing.autoscale_update(max, min)
    return ok(f"autoscale now max={high} min={low}")
