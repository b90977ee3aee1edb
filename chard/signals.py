"""Signals with Celery's names: ``task_prerun``, ``task_postrun``, ``worker_ready`` ...

A :class:`Signal` is a typed list of receivers called in order. ``connect`` works
bare, as a decorator, and as ``connect(sender=...)`` like Celery's. A receiver that
raises is logged and does not stop the others or the task.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

Receiver = Callable[..., Any]


class Signal:
    """A named hook point; receivers are called with ``sender`` and keyword arguments."""

    def __init__(self, name: str, providing_args: tuple[str, ...] = ()) -> None:
        self.name = name
        self.providing_args = providing_args
        self._receivers: list[tuple[Receiver, Any]] = []
        self._lock = threading.Lock()
        #: Whether any receiver is connected: a plain attribute, kept by connect() and
        #: disconnect(), because the send path asks on every delay().
        self.has_receivers = False

    def connect(
        self, receiver: Receiver | None = None, *, sender: Any = None, weak: bool = False
    ) -> Any:
        """Connect ``receiver``; usable as ``@sig.connect`` or ``@sig.connect(sender=x)``."""

        def register(fn: Receiver) -> Receiver:
            with self._lock:
                if all(r is not fn or s is not sender for r, s in self._receivers):
                    self._receivers.append((fn, sender))
                    self.has_receivers = True
            return fn

        return register(receiver) if receiver is not None else register

    def disconnect(self, receiver: Receiver, sender: Any = None) -> None:
        """Remove ``receiver`` (for ``sender``)."""
        with self._lock:
            self._receivers = [
                (r, s) for r, s in self._receivers if r is not receiver or s is not sender
            ]
            self.has_receivers = bool(self._receivers)

    @property
    def receivers(self) -> list[Receiver]:
        """The connected receivers, in order."""
        return [r for r, _ in self._receivers]

    def send(self, sender: Any = None, **kwargs: Any) -> list[tuple[Receiver, Any]]:
        """Call every receiver whose sender filter matches; return ``(receiver, result)`` pairs."""
        if not self._receivers:  # the usual case: a worker sends several per task
            return []
        responses = []
        for receiver, wanted in list(self._receivers):
            if wanted is not None and wanted is not sender:
                continue
            try:
                responses.append((receiver, receiver(sender=sender, signal=self, **kwargs)))
            except Exception as exc:
                logger.exception("Signal handler %r for %s raised: %r", receiver, self.name, exc)
                responses.append((receiver, exc))
        return responses

    def __repr__(self) -> str:
        return f"<Signal: {self.name} receivers={len(self._receivers)}>"


before_task_publish = Signal("before_task_publish")
after_task_publish = Signal("after_task_publish")
task_received = Signal("task_received")
task_prerun = Signal("task_prerun")
task_postrun = Signal("task_postrun")
task_success = Signal("task_success")
task_retry = Signal("task_retry")
task_failure = Signal("task_failure")
task_revoked = Signal("task_revoked")
task_unknown = Signal("task_unknown")
task_rejected = Signal("task_rejected")
worker_init = Signal("worker_init")
worker_process_init = Signal("worker_process_init")
worker_ready = Signal("worker_ready")
worker_shutting_down = Signal("worker_shutting_down")
worker_shutdown = Signal("worker_shutdown")
beat_init = Signal("beat_init")
setup_logging = Signal("setup_logging")
after_setup_logger = Signal("after_setup_logger")
