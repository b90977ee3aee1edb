"""Type checks for the fields of a decoded message, so that bad values fail at decode time.

A message is data from anywhere (another client, another version, a fault injector).
A wrong type that got past decoding used to surface later, in worker code that trusted
the field: ``timelimit=["a", "b"]`` raised ``TypeError`` while a prefork child set its
deadline, outside the guarded run, and killed the child; the message went back to the
queue uncounted and killed the next one, for ever. Checked here, the same message is a
:class:`~chard.exceptions.DecodeError`, which the worker dead-letters once.

Each check takes the raw value and the name to put in the error (``header 'eta'``,
``body args``) and returns the value in the type the message field has. What Celery
really sends passes: nulls where a field is unset, ints where floats are allowed, ISO
strings (or kombu's datetime envelope) for times. :mod:`chard.protocol.message` stays
the only module that knows the field names.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from chard._utils.log import saferepr
from chard.exceptions import DecodeError

#: Highest message priority a broker can carry (AMQP's 0-255; Redis uses 0-9 of it).
MAX_PRIORITY = 255


def _fail(name: str, must: str, value: Any) -> DecodeError:
    return DecodeError(f"{name} must be {must}, got {saferepr(value)}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def optional_str(value: Any, name: str) -> str | None:
    """Return ``value``, a string or None."""
    if value is None or isinstance(value, str):
        return value
    raise _fail(name, "a string or null", value)


def encodable(text: str, name: str) -> None:
    """Check that ``text`` can be encoded as UTF-8 (JSON's ``\\ud800`` escapes cannot).

    The worker writes the task name and id to shared memory, logs and the result backend.
    """
    if text.isascii():
        return
    try:
        text.encode()
    except UnicodeEncodeError:
        raise _fail(name, "valid unicode text", text) from None


def count(value: Any, name: str) -> int:
    """Return ``value``, a non-negative int (None reads as 0: older clients omit it)."""
    if value is None:
        return 0
    if _is_int(value) and value >= 0:
        return int(value)
    raise _fail(name, "a non-negative integer", value)


def optional_index(value: Any, name: str) -> int | None:
    """Return ``value``, a non-negative int or None."""
    if value is None:
        return None
    return count(value, name)


def flag(value: Any, name: str) -> bool:
    """Return ``value``, a bool (None reads as False)."""
    if value is None or isinstance(value, bool):
        return bool(value)
    raise _fail(name, "true, false or null", value)


def priority(value: Any, name: str) -> int:
    """Return ``value``, an int from 0 to :data:`MAX_PRIORITY` (None reads as 0)."""
    if value is None:
        return 0
    if _is_int(value) and 0 <= value <= MAX_PRIORITY:
        return int(value)
    raise _fail(name, f"an integer from 0 to {MAX_PRIORITY}", value)


def _seconds(value: Any) -> bool:
    """Whether ``value`` is a time limit: None, or a finite non-negative int or float."""
    if value is None:
        return True
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) and value >= 0


_NO_LIMITS = [None, None]


def time_limits(value: Any, name: str) -> tuple[float | None, float | None]:
    """Return ``value``, Celery's ``[hard, soft]`` pair of seconds or nulls (None: no limits)."""
    if value is None:
        return None, None
    if type(value) is list and value == _NO_LIMITS:  # what nearly every message carries
        return None, None
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(map(_seconds, value)):
        hard, soft = value
        return hard, soft
    raise _fail(name, "[hard, soft] seconds (non-negative numbers or null)", value)


def instant(value: Any, name: str) -> datetime | None:
    """Return ``value`` as an aware datetime: an ISO 8601 string, a datetime, or None/''."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        when = value
    elif isinstance(value, str):
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            raise _fail(name, "an ISO 8601 time or null", value) from None
    else:
        raise _fail(name, "an ISO 8601 time or null", value)
    # Old clients send naive times; chard's instants are aware, so read those as UTC.
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def table(value: Any, name: str) -> dict[str, Any]:
    """Return ``value``, a dict (None reads as empty): headers, properties, the embed."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    raise _fail(name, "an object", value)


def mapping(value: Any, name: str) -> dict[str, Any]:
    """Return ``value``, a dict with string keys (None reads as empty): keyword arguments."""
    if value is None:
        return {}
    if isinstance(value, dict) and (not value or all(isinstance(key, str) for key in value)):
        return value
    raise _fail(name, "an object with string keys", value)


def sequence(value: Any, name: str) -> tuple[Any, ...]:
    """Return ``value`` as a tuple: it must be a list (or tuple)."""
    if isinstance(value, (list, tuple)):
        return tuple(value)
    raise _fail(name, "a list", value)


def signature(value: Any, name: str) -> dict[str, Any] | None:
    """Return ``value``, a signature dict as Celery embeds one, or None.

    Checked as deep as the worker reads before it hands the dict to the canvas: the
    ``task`` name and the types of ``args``, ``kwargs``, ``options`` and ``chord_size``.
    """
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("task"), str):
        raise _fail(name, "a signature (an object with a string 'task')", value)
    for key, check in (("args", (list, tuple)), ("kwargs", dict), ("options", dict)):
        if value.get(key) is not None and not isinstance(value[key], check):
            raise _fail(name, f"a signature whose {key!r} is {_TYPE_NAMES[key]}", value)
    if value.get("chord_size") is not None and not _is_int(value["chord_size"]):
        raise _fail(name, "a signature whose 'chord_size' is an integer", value)
    return value


_TYPE_NAMES = {"args": "a list", "kwargs": "an object", "options": "an object"}


def signatures(value: Any, name: str) -> list[dict[str, Any]] | None:
    """Return ``value``, a list of signature dicts, or None."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise _fail(name, "a list of signatures or null", value)
    for index, item in enumerate(value):
        signature(item, f"{name}[{index}]")
    return value
