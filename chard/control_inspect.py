"""``app.control.inspect()``: ask the nodes about their state, in Celery's shapes.

Each method is one request through :meth:`chard.control.Control.broadcast` with a reply;
the replies are flattened to ``{node: reply}``, as Celery's ``Inspect`` returns them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chard.control import Control

#: What a node answers: ``{'ok': ...}``, ``{'error': ...}`` or the inspected value.
Reply = Any
#: Called with ``{node: reply}`` as each reply comes in (Celery's ``callback=``).
ReplyCallback = Callable[[dict[str, Reply]], object]


def flatten_reply(replies: Iterable[dict[str, Reply]]) -> dict[str, Reply]:
    """Turn ``[{'a': r1}, {'b': r2}]`` into ``{'a': r1, 'b': r2}`` (Celery's ``flatten_reply``).

    Two replies under one node name mean two workers were started with the same
    ``-n``; that is warned about, and the later reply is kept.
    """
    nodes: dict[str, Reply] = {}
    for item in replies:
        for name, reply in item.items():
            if name in nodes:
                warnings.warn(
                    f"received more than one reply from node {name!r}; give each worker a "
                    "unique node name with `chard worker -n name@%h`",
                    stacklevel=2,
                )
            nodes[name] = reply
    return nodes


class Inspect:
    """Ask the nodes about their state (``app.control.inspect()``), in Celery's shapes.

    Every method returns ``{node: reply}`` for the nodes that answered within
    ``timeout``, or None when none did (as Celery).
    """

    def __init__(
        self,
        control: Control,
        destination: str | Sequence[str] | None = None,
        timeout: float = 1.0,
        callback: ReplyCallback | None = None,
        limit: int | None = None,
    ) -> None:
        self.control = control
        self.destination = destination
        self.timeout = timeout
        self.callback = callback
        self.limit = limit

    def _request(self, command: str, **arguments: Any) -> dict[str, Reply] | None:
        replies = self.control.broadcast(
            command,
            arguments,
            self.destination,
            reply=True,
            timeout=self.timeout,
            limit=self.limit,
            callback=self.callback,
        )
        if not replies:
            return None
        by_node = flatten_reply(replies)
        if isinstance(self.destination, str):  # Celery: one name gets its reply alone
            return by_node.get(self.destination)
        return by_node

    def ping(self, destination: str | Sequence[str] | None = None) -> dict[str, Reply] | None:
        """``{node: {'ok': 'pong'}}``."""
        if destination:
            self.destination = destination
        return self._request("ping")

    def active(self, safe: bool | None = None) -> dict[str, Reply] | None:
        """The tasks running now: ``{node: [task info, ...]}``."""
        return self._request("active", safe=safe)

    def reserved(self, safe: bool | None = None) -> dict[str, Reply] | None:
        """The tasks leased ahead (prefetched or rate limited), not running yet."""
        return self._request("reserved", safe=safe)

    def scheduled(self, safe: bool | None = None) -> dict[str, Reply] | None:
        """The countdown/ETA tasks the broker holds for the queues each node consumes.

        ``{node: [{'eta': iso, 'priority': p, 'request': task info}, ...]}``, soonest
        first (at most 100 per node). chard keeps these in the broker, not in a
        worker's memory, so nodes that consume the same queue list the same tasks;
        whichever is free when one falls due runs it.
        """
        return self._request("scheduled", safe=safe)

    def registered(self, *taskinfoitems: str) -> dict[str, Reply] | None:
        """The tasks each node knows: ``{node: ['proj.add', 'proj.mul [rate_limit=10/m]']}``."""
        return self._request("registered", taskinfoitems=list(taskinfoitems))

    registered_tasks = registered

    def stats(self) -> dict[str, Reply] | None:
        """Per node: ``pid``, ``uptime``, ``pool``, ``total`` per task, ``broker``, ``rusage``."""
        return self._request("stats")

    def active_queues(self) -> dict[str, Reply] | None:
        """The queues each node consumes from (kombu's queue shape)."""
        return self._request("active_queues")

    def revoked(self) -> dict[str, Reply] | None:
        """The revoked task ids each node holds."""
        return self._request("revoked")

    def query_task(self, *ids: str | Sequence[str]) -> dict[str, Reply] | None:
        """``{node: {task_id: ['active' | 'reserved', task info]}}`` for the ids a node holds."""
        flat: list[str] = []
        for item in ids:
            flat.extend([item] if isinstance(item, str) else item)
        return self._request("query_task", ids=flat)

    def conf(self, with_defaults: bool = False) -> dict[str, Reply] | None:
        """Each node's configuration (only what differs from the defaults, unless asked)."""
        return self._request("conf", with_defaults=with_defaults)

    def report(self) -> dict[str, Reply] | None:
        """``{node: {'ok': report}}``: versions, platform, transport, for bug reports."""
        return self._request("report")
