"""Convert chard's envelope bytes to AMQP frames and back, as Celery's AMQP messages look.

chard moves kombu's Redis envelope (JSON: base64 ``body``, ``content-type``, ``headers``,
``properties``) between its layers. On RabbitMQ a Celery message is not that JSON: the
payload is the frame body, the protocol-v2 headers are AMQP headers, and ``correlation_id``,
``reply_to``, ``priority`` and the content type are AMQP properties. :func:`to_frame` takes
the envelope apart on publish and :func:`to_envelope` puts it back on fetch, so a Celery
client or worker on the same RabbitMQ reads chard's messages and the reverse.

Bytes that are not an envelope (the broker contract moves opaque bytes) travel as they are,
marked by :data:`RAW_HEADER`, and come back byte for byte.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

from chard.protocol import serializers
from chard.protocol.ids import new_id

#: Header marking a frame whose body is opaque bytes, not a task envelope.
RAW_HEADER = "x-chard-raw"
#: Header counting the deliveries of this message that were lost before this copy.
COUNT_HEADER = "x-chard-deliveries"
#: Headers of a parked copy: the queue it returns to, and its park id.
ORIGIN_HEADER = "x-chard-origin"
PARK_HEADER = "x-chard-park"
#: Header of a message in a delay chain: when it falls due (Unix time in milliseconds).
ETA_HEADER = "x-chard-eta"
#: Headers RabbitMQ adds (dead-lettering through the delay queues) or chard keeps for
#: itself: never part of the envelope a worker decodes.
_BOOKKEEPING = frozenset({
    RAW_HEADER, COUNT_HEADER, ORIGIN_HEADER, PARK_HEADER, ETA_HEADER, "x-death",
    "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason",
    "x-last-death-exchange", "x-last-death-queue", "x-last-death-reason",
})  # fmt: skip


@dataclass
class Frame:
    """One AMQP message: body plus the properties chard sets (None ones are left out)."""

    body: bytes
    headers: dict[str, Any] = field(default_factory=dict)
    content_type: str | None = None
    content_encoding: str | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    priority: int = 0


def to_frame(envelope: bytes, priority: int) -> Frame:
    """Return the AMQP frame for ``envelope``; opaque bytes are marked and kept whole."""
    parsed = _parse(envelope)
    if parsed is None:
        return Frame(envelope, {RAW_HEADER: True}, priority=priority)
    props = parsed.get("properties") or {}
    raw = parsed.get("body", "")
    if props.get("body_encoding") == "base64":
        body = base64.b64decode(raw)
    else:
        body = raw.encode() if isinstance(raw, str) else bytes(raw)
    return Frame(
        body=body,
        headers=dict(parsed.get("headers") or {}),
        content_type=parsed.get("content-type"),
        content_encoding=parsed.get("content-encoding"),
        correlation_id=_text(props.get("correlation_id")),
        reply_to=_text(props.get("reply_to")) or None,
        priority=priority,
    )


def to_envelope(frame: Frame, queue: str, exchange: str = "") -> bytes:
    """Return the envelope bytes chard's worker decodes from an AMQP ``frame``."""
    if frame.headers.get(RAW_HEADER):
        return frame.body
    headers = {k: v for k, v in frame.headers.items() if k not in _BOOKKEEPING}
    envelope = {
        "body": base64.b64encode(frame.body).decode("ascii"),
        "content-encoding": frame.content_encoding or "utf-8",
        "content-type": frame.content_type or "application/json",
        "headers": headers,
        "properties": {
            "correlation_id": frame.correlation_id,
            "reply_to": frame.reply_to,
            "delivery_mode": 2,
            "delivery_info": {"exchange": exchange, "routing_key": queue},
            "priority": frame.priority,
            "body_encoding": "base64",
            "delivery_tag": new_id(),
        },
    }
    return serializers.json_dumps(envelope)


def lost_deliveries(frame: Frame) -> int:
    """Return how many deliveries of this message were lost before this copy (header)."""
    value = frame.headers.get(COUNT_HEADER, 0)
    return value if isinstance(value, int) and value > 0 else 0


def _parse(envelope: bytes) -> dict[str, Any] | None:
    if not envelope.startswith(b"{"):
        return None
    try:
        parsed = serializers.json_loads(envelope)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(parsed, dict) or not {"body", "headers", "properties"} <= parsed.keys():
        return None
    props = parsed.get("properties")
    if props is not None and not isinstance(props, dict):
        return None
    if isinstance(props, dict) and props.get("body_encoding") == "base64":
        try:
            base64.b64decode(parsed.get("body", ""), validate=True)
        except (binascii.Error, TypeError, ValueError):
            return None
    return parsed


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
