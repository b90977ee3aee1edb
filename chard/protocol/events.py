"""Monitoring events on the wire: Celery's event dicts, batched on the ``events`` channel.

An event is what Celery sends (``celery/events/event.py``): a flat dict whose
``type`` names it (``task-succeeded``, ``worker-heartbeat``...) and that carries
``hostname``, ``timestamp`` (Unix seconds), ``utcoffset``, ``pid`` and ``clock``
beside the fields of its type, so that code written for Celery's events reads
chard's unchanged. Task events name their task by ``uuid``.

chard carries them on the broker's ``events`` broadcast channel (see
:meth:`chard.brokers.base.Broker.broadcast`), a batch per entry, as JSON::

    {"v": 1, "events": [{"type": "task-received", "uuid": "...", ...}, ...]}

A batch from another version (``v`` is not 1) or one that is not that shape is
refused whole with :class:`~chard.exceptions.DecodeError`; inside a good batch, an
event without a string ``type`` and ``hostname`` and a numeric ``timestamp`` is
dropped (the receiver logs both). No I/O here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from chard.exceptions import DecodeError

#: The broadcast channel events travel on.
EVENTS_CHANNEL = "events"
#: The batch format this code writes and reads.
EVENTS_VERSION = 1
#: Entries (batches) the ``events`` channel keeps: it is history for ``--from-start``,
#: not a queue, and a batch under load holds hundreds of events.
EVENTS_MAXLEN = 1_000
#: Seconds between two ``worker-heartbeat`` events (Celery's default).
HEARTBEAT_INTERVAL = 2.0

#: Every task event type, in the order of a task's life.
TASK_EVENTS = (
    "task-sent",
    "task-received",
    "task-started",
    "task-succeeded",
    "task-failed",
    "task-retried",
    "task-revoked",
    "task-rejected",
)
#: Every worker event type.
WORKER_EVENTS = ("worker-online", "worker-heartbeat", "worker-offline")

#: An event: Celery's flat dict.
Event = dict[str, Any]


def utcoffset() -> int:
    """Return this host's offset from UTC in hours, as Celery's events carry it (west > 0)."""
    is_dst = time.daylight and time.localtime().tm_isdst > 0
    return (time.altzone if is_dst else time.timezone) // 3600


def group_of(type_: str) -> str:
    """Return the group of an event type (``task-sent`` -> ``task``), as Celery's ``group_from``."""
    return type_.split("-", 1)[0]


def encode_batch(events: Sequence[Event]) -> bytes:
    """Encode ``events`` as one entry of the ``events`` channel.

    A value JSON cannot hold (a field someone passed to :meth:`send` by hand) is
    written as its ``repr``, so one odd field never loses a batch.
    """
    batch = {"v": EVENTS_VERSION, "events": list(events)}
    return json.dumps(batch, separators=(",", ":"), default=repr).encode()


def decode_batch(payload: bytes) -> tuple[list[Event], int]:
    """Decode an entry of the ``events`` channel; return its events and how many were dropped.

    Raises:
        DecodeError: not JSON, not a batch, or a batch of another version (names which).
    """
    try:
        batch: Any = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DecodeError(f"event batch is not JSON: {exc}", payload) from exc
    if not isinstance(batch, dict) or not isinstance(batch.get("events"), list):
        raise DecodeError(f"event batch is not an object with an events list: {batch!r:.80}")
    if batch.get("v") != EVENTS_VERSION:
        raise DecodeError(
            f"event batch of version {batch.get('v')!r}, this chard reads {EVENTS_VERSION}; "
            "upgrade the older side"
        )
    events = [e for e in batch["events"] if is_valid(e)]
    return events, len(batch["events"]) - len(events)


def is_valid(event: Any) -> bool:
    """Return whether ``event`` has what every consumer relies on: type, hostname, timestamp."""
    if not isinstance(event, dict):
        return False
    stamp = event.get("timestamp")
    return (
        isinstance(event.get("type"), str)
        and isinstance(event.get("hostname"), str)
        and isinstance(stamp, (int, float))
        and not isinstance(stamp, bool)
    )
