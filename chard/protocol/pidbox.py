"""Celery's remote control (kombu's ``celery.pidbox``), for commanding a mixed fleet.

Celery's ``app.control`` publishes one message on the fanout exchange ``celery.pidbox``;
on kombu's Redis transport that is a ``PUBLISH`` (pub/sub, not stored) on
``<global_keyprefix>/<db>.celery.pidbox`` of the usual JSON envelope, whose base64 body
is::

    {"method": "ping", "arguments": {}, "destination": null | ["w1@host"],
     "pattern": null, "matcher": null,                        # "glob" | "pcre"
     "ticket": "<uuid>",                                       # calls only
     "reply_to": {"exchange": "reply.celery.pidbox", "routing_key": "<oid>"}}

and whose ``expires`` header is the unix time after which it is stale. A cast
(``revoke``, ``rate_limit`` without a reply) has no ``ticket`` nor ``reply_to``. Each
node that the request selects answers a call with ``{"<node>": <reply>}`` on the direct
exchange ``reply.celery.pidbox`` under the client's routing key, header ``ticket``.

chard's own remote control travels on chard's broadcast channels; this module is what
chard writes and reads on Celery's, so that each kind of client reaches both kinds of
worker (see :mod:`chard.control` and :mod:`chard.worker.celery_control`). chard's client
marks its casts with :data:`CHARD_HEADER`: a chard worker reads chard's own copy of the
request instead, and so answers once.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from chard.protocol.control import Revocation
from chard.protocol.ids import new_id
from chard.protocol.serializers import json_loads

#: Celery's control exchange, and kombu's fanout topic for it on Redis db ``db``.
PIDBOX_EXCHANGE = "celery.pidbox"
#: Celery's reply exchange (direct; the routing key names the client).
REPLY_EXCHANGE = "reply.celery.pidbox"
#: How long a cast is honoured after it is sent (kombu's broadcast default is 1 s; more
#: here because hosts' clocks differ).
CAST_TTL = 60.0
#: Header on the casts chard's client sends: chard workers skip them (they read chard's
#: own copy of the request). Celery's workers ignore headers they do not know.
CHARD_HEADER = "x-chard-client"


def pidbox_topic(db: int) -> str:
    """Return kombu's pub/sub topic of Celery's control exchange (before the key prefix)."""
    return f"/{db}.{PIDBOX_EXCHANGE}"


@dataclass(frozen=True)
class CeleryRequest:
    """One Celery control message, as a worker reads it; see the module docstring."""

    method: str
    arguments: dict[str, Any]
    destination: tuple[str, ...] | None = None
    pattern: str | None = None
    matcher: str | None = None
    #: Set on calls (a reply is awaited), with :attr:`reply_to`.
    ticket: str | None = None
    reply_to: dict[str, str] | None = None
    #: Unix time after which the request is stale (None: never).
    expires: float | None = None
    #: Sent by chard's client, which also put the request on chard's own channel.
    from_chard: bool = False

    def is_for(self, node: str) -> bool:
        """Return whether ``node`` is selected (kombu's ``Node.handle_message`` rule)."""
        if self.destination:
            return node in self.destination
        if self.pattern and self.matcher:
            if self.matcher == "pcre":
                return re.match(self.pattern, node) is not None
            return self.matcher == "glob" and fnmatch.fnmatch(node, self.pattern)
        return True

    def is_expired(self, now: float) -> bool:
        return self.expires is not None and self.expires < now


def request_cast(
    method: str,
    arguments: Mapping[str, Any],
    *,
    now: float,
    ttl: float = CAST_TTL,
    destination: Sequence[str] | None = None,
    ticket: str | None = None,
    reply_to: Mapping[str, str] | None = None,
) -> bytes:
    """Return the envelope of a Celery control message from chard's client (marked as such).

    Raises:
        TypeError: an argument is not JSON.
    """
    body: dict[str, Any] = {
        "method": method,
        "arguments": dict(arguments),
        "destination": list(destination) if destination is not None else None,
        "pattern": None,
        "matcher": None,
    }
    if ticket is not None:
        body.update(ticket=ticket, reply_to=dict(reply_to or {}))
    headers = {"clock": 1, "expires": now + ttl, CHARD_HEADER: True}
    return _envelope(json.dumps(body).encode(), headers, PIDBOX_EXCHANGE, "", delivery_mode=2)


def revoke_cast(
    ids: Sequence[str], *, terminate: bool, signal: str, now: float, ttl: float = CAST_TTL
) -> bytes:
    """Return the envelope of Celery's ``revoke`` cast to every worker."""
    arguments = {"task_id": list(ids), "terminate": terminate, "signal": signal}
    return request_cast("revoke", arguments, now=now, ttl=ttl)


def read_request(data: bytes) -> CeleryRequest | None:
    """Return the request an envelope carries, or None for bytes that are not one.

    Pub/sub and the fanout are open to anyone, so nothing here raises.
    """
    try:
        envelope = json.loads(data)
        headers = envelope.get("headers") or {}
        body: Any = json_loads(_body(envelope))
        method = body["method"]
        destination = body.get("destination")
        reply_to = body.get("reply_to")
        expires = headers.get("expires")
        if not isinstance(method, str) or (reply_to is not None and not isinstance(reply_to, dict)):
            return None
        return CeleryRequest(
            method,
            dict(body.get("arguments") or {}),
            tuple(destination) if destination else None,
            body.get("pattern"),
            body.get("matcher"),
            body.get("ticket"),
            {str(k): str(v) for k, v in reply_to.items()} if reply_to else None,
            float(expires) if expires else None,  # kombu sends 0 for "no timeout"
            bool(headers.get(CHARD_HEADER)),
        )
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def revocation_of(request: CeleryRequest, now: float, ttl: float) -> Revocation | None:
    """Return the revocation a ``revoke`` (or ``terminate``) request carries, or None.

    None for another command or a bad signal. Honoured for ``ttl`` seconds from ``now``.
    """
    if request.method not in ("revoke", "terminate"):
        return None
    arguments = request.arguments
    ids = arguments.get("task_id")
    ids = [ids] if isinstance(ids, str) else list(ids or ())
    terminate = request.method == "terminate" or bool(arguments.get("terminate"))
    try:
        return Revocation.create(
            ids, now=now, terminate=terminate, signal=arguments.get("signal"), ttl=ttl
        )
    except (ValueError, TypeError):
        return None


def read_revoke(data: bytes, node: str, now: float, ttl: float) -> Revocation | None:
    """Return the revocation a Celery cast carries for ``node``, or None.

    None for anything else: another command, a cast for other nodes (``destination``),
    an expired one, or bytes that are not such a cast.
    """
    request = read_request(data)
    if request is None or not request.is_for(node) or request.is_expired(now):
        return None
    return revocation_of(request, now, ttl)


def reply_envelope(node: str, reply: Any, ticket: str, reply_to: Mapping[str, str]) -> bytes:
    """Return the envelope of ``node``'s reply to the call ``ticket`` (kombu's shape); what
    JSON cannot hold is repr'd, as in chard's own replies."""
    body = json.dumps({node: reply}, default=repr).encode()
    headers = {"ticket": ticket, "clock": 1}
    exchange = reply_to.get("exchange") or REPLY_EXCHANGE
    return _envelope(body, headers, exchange, reply_to.get("routing_key", ""), delivery_mode=1)


def read_reply(data: bytes) -> tuple[str, dict[str, Any] | None]:
    """Return the ticket and ``{node: reply}`` of a reply envelope; ``("", None)`` for bytes
    that are not a reply."""
    try:
        envelope = json.loads(data)
        ticket = (envelope.get("headers") or {}).get("ticket")
        body = json_loads(_body(envelope))
    except (ValueError, TypeError, KeyError, AttributeError):
        return "", None
    if not isinstance(ticket, str) or not isinstance(body, dict):
        return "", None
    if not all(isinstance(node, str) for node in body):
        return "", None
    return ticket, body


def _envelope(
    body: bytes, headers: dict[str, Any], exchange: str, routing_key: str, *, delivery_mode: int
) -> bytes:
    envelope = {
        "body": base64.b64encode(body).decode("ascii"),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            "delivery_mode": delivery_mode,
            "delivery_info": {"exchange": exchange, "routing_key": routing_key},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": new_id(),
        },
    }
    return json.dumps(envelope).encode()


def _body(envelope: dict[str, Any]) -> bytes:
    raw = envelope["body"]
    # kombu's envelopes are base64 unless they say otherwise
    if (envelope.get("properties") or {}).get("body_encoding", "base64") == "base64":
        return base64.b64decode(raw, validate=True)
    return raw.encode() if isinstance(raw, str) else bytes(raw)
