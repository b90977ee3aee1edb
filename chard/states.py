"""Task states, with Celery's names and precedence.

A state only moves forward: a late ``STARTED`` must not overwrite ``SUCCESS``
(a redelivered duplicate, a slow heartbeat). :func:`precedence` orders states so
the backend can refuse such a step back.
"""

from __future__ import annotations

#: Task id unknown, or not yet received by a worker.
PENDING = "PENDING"
#: A worker has received the message.
RECEIVED = "RECEIVED"
#: The task has started (stored only with ``track_started``).
STARTED = "STARTED"
#: The task succeeded.
SUCCESS = "SUCCESS"
#: The task raised an exception (or its process died).
FAILURE = "FAILURE"
#: The task was revoked or expired.
REVOKED = "REVOKED"
#: The task was rejected.
REJECTED = "REJECTED"
#: The task is waiting to be retried.
RETRY = "RETRY"
IGNORED = "IGNORED"

READY_STATES = frozenset({SUCCESS, FAILURE, REVOKED})
UNREADY_STATES = frozenset({PENDING, RECEIVED, STARTED, REJECTED, RETRY})
EXCEPTION_STATES = frozenset({RETRY, FAILURE, REVOKED})
PROPAGATE_STATES = frozenset({FAILURE, REVOKED})
ALL_STATES = frozenset({PENDING, RECEIVED, STARTED, SUCCESS, FAILURE, RETRY, REVOKED})

# Lower index = further along. Custom states rank with STARTED (after RECEIVED).
_PRECEDENCE = [SUCCESS, FAILURE, None, REVOKED, STARTED, RECEIVED, REJECTED, RETRY, PENDING]
_CUSTOM_INDEX = _PRECEDENCE.index(None)


def precedence(state: str) -> int:
    """Return the rank of ``state``: a smaller number is a later state."""
    try:
        return _PRECEDENCE.index(state)
    except ValueError:
        return _CUSTOM_INDEX


def is_ready(state: str) -> bool:
    """Return whether ``state`` is final."""
    return state in READY_STATES


__all__ = [
    "ALL_STATES",
    "EXCEPTION_STATES",
    "FAILURE",
    "IGNORED",
    "PENDING",
    "PROPAGATE_STATES",
    "READY_STATES",
    "RECEIVED",
    "REJECTED",
    "RETRY",
    "REVOKED",
    "STARTED",
    "SUCCESS",
    "UNREADY_STATES",
    "is_ready",
    "precedence",
]
