"""``Context``: what a running task knows about its own invocation (``self.request``).

Its own module, below the task and the canvas, because both build one: the worker
and ``apply()`` for a run, the canvas for the request an errback receives
(``errback(request, exc, traceback)``, Celery's form).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass
class Context:
    """What a running task knows about its own invocation (``self.request``)."""

    id: str | None = None
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    retries: int = 0
    is_eager: bool = False
    called_directly: bool = True
    hostname: str | None = None
    delivery_info: dict[str, Any] = field(default_factory=dict)
    root_id: str | None = None
    parent_id: str | None = None
    group: str | None = None
    group_index: int | None = None
    eta: datetime | None = None
    expires: datetime | None = None
    origin: str | None = None
    reply_to: str | None = None
    timelimit: tuple[float | None, float | None] = (None, None)
    callbacks: list[dict[str, Any]] | None = None
    errbacks: list[dict[str, Any]] | None = None
    chain: list[dict[str, Any]] | None = None
    chord: dict[str, Any] | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    ignore_result: bool = False
    priority: int | None = None
    #: chard: how many times this message was delivered (1 = first time).
    delivery_count: int = 1
    #: What this task sent while it ran, as Celery's result tuples (``result.children``);
    #: None when the task keeps no trail (``trail=False``).
    children: list[Any] | None = field(default_factory=list)
    #: The message's properties, as Celery's ``request.properties`` (``correlation_id``,
    #: ``reply_to``, ``priority``, ``delivery_mode``).
    properties: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        """Return attribute ``key`` or ``default`` (Celery's dict-like access)."""
        return getattr(self, key, default)
