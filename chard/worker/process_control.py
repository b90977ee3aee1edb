"""Remote control inside each consuming process: what it holds, and the changes it takes.

A node answers a control command once, from its main process (see
:mod:`chard.worker.mailbox`), but with prefork what a node holds, and the limits
and queues it runs by, live in its children: each child is a whole consumer. So
each consuming process has a :class:`ProcessControl`, and the node *asks* them:

* with threads or solo, the one consumer is in the main process: a direct call;
* with prefork, each child serves its parent on a pipe made at fork
  (:func:`serve_parent`, a thread that sleeps on the pipe), and the parent asks
  every live child at once (:func:`ask_children`), waiting at most the request's
  remaining time. A child that does not answer in time is left out of the reply.

A change (a rate limit, a time limit, the queues) is also made in the parent, so a
child forked later (``max_tasks_per_child``, a crash) starts with it. Nothing here
runs per task.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any, cast

from chard.exceptions import ChardError
from chard.protocol.message import TaskMessage

if TYPE_CHECKING:
    from chard.worker.consumer import Consumer

logger = logging.getLogger("chard.worker")

#: Task options ``control time_limit`` / ``rate_limit`` may change.
TASK_OPTIONS = frozenset({"rate_limit", "time_limit", "soft_time_limit"})


def task_info(
    message: TaskMessage,
    *,
    queue: str,
    hostname: str,
    redelivered: bool = False,
    acknowledged: bool = False,
    worker_pid: int | None = None,
    safe: bool = False,
) -> dict[str, Any]:
    """Return a task's description in Celery's ``TASK_INFO`` shape (``Request.info()``)."""
    headers = message.headers()
    return {
        "id": message.id,
        "name": message.task,
        "args": headers["argsrepr"] if safe else list(message.args),
        "kwargs": headers["kwargsrepr"] if safe else dict(message.kwargs),
        "type": message.task,
        "hostname": hostname,
        "time_start": None,
        "acknowledged": acknowledged,
        "delivery_info": {
            "exchange": "",
            "routing_key": queue,
            "priority": message.priority,
            "redelivered": redelivered,
        },
        "worker_pid": worker_pid,
    }


class ProcessControl:
    """The control actions one consuming process takes; see the module docstring.

    Args:
        consumer: this process's consumer.
        hostname: the node name, for the task descriptions.
        running: the id of the task running now, when a batch pool knows better than
            "everything handed to the pool" (a prefork child reads its slot).
    """

    def __init__(
        self,
        consumer: Consumer,
        hostname: str,
        running: Callable[[], str | None] | None = None,
    ) -> None:
        self.consumer = consumer
        self.hostname = hostname
        self._running = running

    def handle(self, action: str, arguments: Mapping[str, Any]) -> Any:
        """Run ``action`` (one of the methods below) with ``arguments``; return its answer.

        Raises:
            ValueError: no such action.
        """
        if action == "held":
            return self.held(bool(arguments.get("safe")))
        if action == "totals":
            return dict(self.consumer.stats.by_task)
        if action == "set_task_options":
            return self.set_task_options(str(arguments["name"]), dict(arguments["options"]))
        if action == "set_queues":
            self.consumer.queues = [str(q) for q in arguments["queues"]]
            return True
        raise ValueError(f"unknown process control action {action!r}")

    def held(self, safe: bool = False) -> dict[str, list[dict[str, Any]]]:
        """Return ``{"active": [...], "reserved": [...]}``: running, and leased but waiting."""
        inflight, waiting = self.consumer.holding()
        running = self._running() if self._running is not None else None
        pid = os.getpid()
        active: list[dict[str, Any]] = []
        reserved: list[dict[str, Any]] = []
        for item in inflight:
            info = task_info(
                item.message,
                queue=item.delivery.queue,
                hostname=self.hostname,
                redelivered=item.delivery.delivery_count > 1,
                acknowledged=item.acked_early,
                worker_pid=pid,
                safe=safe,
            )
            is_running = running is None or running == item.message.id
            (active if is_running else reserved).append(info)
        app = self.consumer.app
        for delivery in waiting:
            try:
                message = TaskMessage.from_wire(delivery.body, app.accept_content)
            except ChardError:
                continue  # the consumer will set it aside with a log line of its own
            redelivered = delivery.delivery_count > 1
            info = task_info(
                message,
                queue=delivery.queue,
                hostname=self.hostname,
                redelivered=redelivered,
                safe=safe,
            )
            reserved.append(info)
        return {"active": active, "reserved": reserved}

    def set_task_options(self, name: str, options: dict[str, Any]) -> bool:
        """Set options of task ``name`` in this process (False: not registered here)."""
        task = self.consumer.app.tasks.get(name)
        if task is None:
            return False
        for option, value in options.items():
            if option in TASK_OPTIONS:
                setattr(task, option, value)
        if "rate_limit" in options:
            self.consumer.limits_changed()
        return True


# -- the pipe between a prefork parent and each child -----------------------------------------


def serve_parent(conn: Connection, control: ProcessControl) -> None:
    """In a child: answer the parent's ``(n, action, arguments)`` with ``(n, answer)``, until EOF.

    Never raises: a failing action is answered ``{"error": ...}`` and logged.
    """
    while True:
        try:
            number, action, arguments = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone, or closed its end
        try:
            answer = control.handle(action, arguments)
        except Exception as exc:
            logger.exception("Control action %r failed in process %d", action, os.getpid())
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        try:
            conn.send((number, answer))
        except (OSError, ValueError):
            return


def ask_children(
    conns: Sequence[Connection],
    number: int,
    action: str,
    arguments: Mapping[str, Any],
    timeout: float,
) -> list[Any]:
    """In the parent: ask every child ``action``; return the answers that came within ``timeout``.

    ``number`` tells this request's answers from a late answer to an earlier one.
    A child that died (or dies meanwhile) is skipped.
    """
    pending: list[Connection] = []
    for conn in conns:
        with contextlib.suppress(OSError, ValueError):
            conn.send((number, action, dict(arguments)))
            pending.append(conn)
    answers: list[Any] = []
    deadline = time.monotonic() + timeout
    while pending:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            ready = wait(pending, remaining)
        except (OSError, ValueError):  # a connection closed under us: ask the rest again
            pending = [c for c in pending if not c.closed]
            continue
        for ready_conn in ready:
            conn = cast(Connection, ready_conn)
            try:
                got, answer = conn.recv()
            except (EOFError, OSError, ValueError):
                pending.remove(conn)
                continue
            if got == number:
                answers.append(answer)
                pending.remove(conn)
    if pending:
        logger.warning("%d worker process(es) did not answer %r in time", len(pending), action)
    return answers
