"""Every error chard raises, under one root.

The tree (Celery's names kept where users catch them)::

    ChardError
    ├── ImproperlyConfigured          bad setting, unknown URL scheme, no result backend
    ├── NoCurrentApp                  shared_task used before any app exists
    ├── NotRegistered (also KeyError) task name unknown to the registry
    ├── SerializationError            cannot encode an argument or result
    │   └── EncodeError               a task's return value cannot be stored (kombu's name)
    ├── ContentDisallowed             payload content type not in accept_content
    ├── DecodeError                   a message on the wire is malformed
    ├── BrokerError
    │   └── BrokerConnectionError (also ConnectionError)
    ├── BackendError
    │   └── BackendConnectionError (also ConnectionError)
    ├── ResultTimeout (also TimeoutError)   get(timeout=) elapsed; alias ``TimeoutError``
    ├── TaskError                      raised while a task runs, on the worker
    │   ├── Retry                      control flow of ``self.retry()``
    │   ├── Ignore / Reject            control flow: drop or reject the message
    │   ├── MaxRetriesExceededError
    │   ├── WorkerLostError            the process running the task died
    │   ├── TaskRevokedError           the task was revoked or expired
    │   ├── TimeLimitExceeded          hard time limit: the child was killed
    │   └── ChordError                 a chord header member failed
    ├── RemoteTaskError                a task failed with an exception type not importable here
    └── SoftTimeLimitExceeded          raised inside a task at its soft time limit

``SoftTimeLimitExceeded`` derives from ``ChardError`` like the rest, so a bare
``except Exception`` in a task still catches it, as in Celery.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any


class ChardError(Exception):
    """Root of every error raised by chard."""


class ImproperlyConfigured(ChardError):
    """A setting, URL or argument that chard cannot work with."""


class NoCurrentApp(ChardError):
    """``shared_task`` or ``current_app`` used before any app was created."""


class NotRegistered(ChardError, KeyError):
    """The task name is not in the app's registry."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else ""


class SerializationError(ChardError):
    """A value cannot be encoded with the chosen serializer."""


class EncodeError(SerializationError):
    """A task's return value cannot be encoded by the result serializer.

    Stored as the task's FAILURE (Celery stores kombu's ``EncodeError`` the same way),
    instead of the task waiting forever for a result that was never written.
    """


class ContentDisallowed(ChardError):
    """A payload's content type is not listed in ``accept_content``."""


class DecodeError(ChardError):
    """A message on the wire cannot be decoded into a task message."""

    def __init__(self, message: str, data: bytes | None = None) -> None:
        super().__init__(message)
        self.data = data


class BrokerError(ChardError):
    """The broker failed an operation."""


class BrokerConnectionError(BrokerError, ConnectionError):
    """The broker cannot be reached."""


class BackendError(ChardError):
    """The result backend failed an operation."""


class BackendConnectionError(BackendError, ConnectionError):
    """The result backend cannot be reached (after its own retries)."""


class ResultTimeout(ChardError, TimeoutError):
    """``AsyncResult.get(timeout=...)`` elapsed before the task was ready."""


#: Celery's name for :class:`ResultTimeout`; catching the builtin works too.
TimeoutError = ResultTimeout


class TaskError(ChardError):
    """Base of errors raised around task execution."""


class Retry(TaskError):
    """Raised by ``Task.retry()`` so the worker reschedules the task."""

    def __init__(
        self,
        message: str | None = None,
        exc: BaseException | None = None,
        when: float | datetime | None = None,
        **kwargs: Any,
    ) -> None:
        self.message = message
        self.exc = exc
        #: Seconds from now (a countdown), or the instant (an eta) of the next attempt.
        self.when = when
        super().__init__(message or f"Retry {self.humanize()}", exc)

    def humanize(self) -> str:
        """Say when the task runs again, as Celery's: ``in 5s`` or ``at <eta>``."""
        if isinstance(self.when, (int, float)):
            return f"in {self.when}s"
        return f"at {self.when}"

    def __str__(self) -> str:
        if self.message:
            return self.message
        if self.exc:
            return f"Retry {self.humanize()}: {self.exc!r}"
        return f"Retry {self.humanize()}"


class Ignore(TaskError):
    """Raised by a task to have the worker drop the message without storing a state."""


class Reject(TaskError):
    """Raised by a task to reject its message, optionally requeueing it."""

    def __init__(self, reason: Any = None, requeue: bool = False) -> None:
        self.reason = reason
        self.requeue = requeue
        super().__init__(reason, requeue)


class MaxRetriesExceededError(TaskError):
    """``self.retry()`` was called more than ``max_retries`` times."""


class WorkerLostError(TaskError):
    """The process executing the task exited before the task finished."""


class TaskRevokedError(TaskError):
    """The task was revoked or expired before it ran."""


class TimeLimitExceeded(TaskError):
    """The task ran past its hard time limit and its process was killed."""


class ChordError(TaskError):
    """A member of a chord's header failed, so the body cannot run."""


class SoftTimeLimitExceeded(ChardError):
    """Raised inside a running task when its soft time limit passes."""


class RemoteTaskError(ChardError):
    """A task failed with an exception whose type cannot be imported here.

    Carries the remote type's module and name and the remote traceback, so the
    failure is never reduced to an opaque string.
    """

    def __init__(self, exc_module: str, exc_type: str, message: str, traceback: str | None) -> None:
        self.exc_module = exc_module
        self.exc_type = exc_type
        self.remote_traceback = traceback
        super().__init__(f"{exc_module}.{exc_type}: {message}")


__all__ = [
    "BackendConnectionError",
    "BackendError",
    "BrokerConnectionError",
    "BrokerError",
    "ChardError",
    "ChordError",
    "ContentDisallowed",
    "DecodeError",
    "EncodeError",
    "Ignore",
    "ImproperlyConfigured",
    "MaxRetriesExceededError",
    "NoCurrentApp",
    "NotRegistered",
    "Reject",
    "RemoteTaskError",
    "ResultTimeout",
    "Retry",
    "SerializationError",
    "SoftTimeLimitExceeded",
    "TaskError",
    "TaskRevokedError",
    "TimeLimitExceeded",
    "TimeoutError",
    "WorkerLostError",
]
