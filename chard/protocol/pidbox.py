"""Celery's remote-control casts (kombu's ``celery.pidbox``), for revoking across a mixed fleet.

Celery's ``app.control.revoke(id)`` publishes one message on the fanout exchange
``celery.pidbox``; on kombu's Redis transport that is a ``PUBLISH`` (pub/sub, not
stored) on ``<global_keyprefix>/<db>.celery.pidbox`` of the usual JSON envelope, whose
base64 body is ``{"method": "revoke", "arguments": {"task_id": [...], "terminate": ...,
"signal": ...}, "destination": null, "pattern": null, "matcher": null}`` and whose
``expires`` header is the unix time after which workers ignore it.

Only ``revoke`` crosses between the two kinds of worker: the rest of Celery's control
commands (``inspect``, ``ping``, ``rate_limit``...) expect replies on kombu's reply
queues, and chard's own control travels on chard's broadcast channels.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any

from chard.protocol.control import Revocation
from chard.protocol.message import new_id

#: Celery's control exchange, and kombu's fanout topic for it on Redis db ``db``.
PIDBOX_EXCHANGE = "celery.pidbox"
#: How long a cast is honoured after it is sent (kombu's broadcast default is 1 s; more
#: here because hosts' clocks differ).
CAST_TTL = 60.0


def pidbox_topic(db: int) -> str:
    """Return kombu's pub/sub topic of Celery's control exchange (before the key prefix)."""
    return f"/{db}.{PIDBOX_EXCHANGE}"


def revoke_cast(
    ids: Sequence[str], *, terminate: bool, signal: str, now: float, ttl: float = CAST_TTL
) -> bytes:
    """Return the envelope of Celery's ``revoke`` cast to every worker."""
    body = {
        "method": "revoke",
        "arguments": {"task_id": list(ids), "terminate": terminate, "signal": signal},
        "destination": None,
        "pattern": None,
        "matcher": None,
    }
    envelope = {
        "body": base64.b64encode(json.dumps(body).encode()).decode("ascii"),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"clock": 1, "expires": now + ttl},
        "properties": {
            "delivery_mode": 2,
            "delivery_info": {"exchange": PIDBOX_EXCHANGE, "routing_key": ""},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": new_id(),
        },
    }
    return json.dumps(envelope).encode()


def read_revoke(data: bytes, node: str, now: float, ttl: float) -> Revocation | None:
    """Return the revocation a Celery cast carries for ``node``, or None.

    None for anything else: another command, a cast for other nodes (``destination``),
    an expired one, or bytes that are not such a cast (pub/sub is open to anyone, so
    nothing here raises). The revocation is honoured for ``ttl`` seconds from ``now``.
    """
    try:
        envelope = json.loads(data)
        body: Any = json.loads(base64.b64decode(envelope["body"]))
        expires = (envelope.get("headers") or {}).get("expires")
        if body.get("method") != "revoke" or (expires is not None and float(expires) < now):
            return None
        destination = body.get("destination")
        if destination and node not in destination:
            return None
        arguments = body.get("arguments") or {}
        ids = arguments.get("task_id")
        ids = [ids] if isinstance(ids, str) else list(ids or ())
        return Revocation.create(
            ids,
            now=now,
            terminate=bool(arguments.get("terminate")),
            signal=arguments.get("signal"),
            ttl=ttl,
        )
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
