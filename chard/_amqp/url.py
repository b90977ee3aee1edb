"""Parse chard's AMQP URLs without importing the client library.

``amqp://[user:pass@]host[:port]/[vhost]`` as kombu reads it: ``amqp://`` alone is
``guest:guest@localhost:5672`` on vhost ``/``; the path is the vhost, URL-quoted
(``/%2F`` and ``//`` both mean ``/``). ``pyamqp://`` is an alias, ``amqps://`` turns
on TLS (port 5671 by default) with the ``ssl`` transport option, as Celery's
``broker_use_ssl`` gives it.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from chard._utils.log import redact_url
from chard.exceptions import ImproperlyConfigured

AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")


@dataclass(frozen=True)
class AmqpTarget:
    """Where to connect, as whom, and how."""

    host: str
    port: int
    vhost: str
    user: str
    password: str = field(repr=False)
    #: TLS on (amqps://); ``ssl_options`` are the ``ssl`` module's keywords (ca_certs, ...).
    tls: bool = False
    ssl_options: Mapping[str, Any] = field(default_factory=dict)
    #: AMQP heartbeat interval (seconds) the client asks for.
    heartbeat: int = 60
    connect_timeout: float = 4.0
    #: The URL with its password replaced, for log lines and error messages.
    redacted: str = ""


def parse_amqp_url(url: str, options: Mapping[str, Any] | None = None) -> AmqpTarget:
    """Split ``url`` (see the module docstring) into an :class:`AmqpTarget`.

    Raises:
        ImproperlyConfigured: not an AMQP URL, or a bad port.
    """
    options = options or {}
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in AMQP_SCHEMES:
        raise ImproperlyConfigured(
            f"not an AMQP URL: {redact_url(url)!r}; use amqp://user:pass@host:5672/vhost"
        )
    tls = scheme == "amqps" or bool(options.get("ssl"))
    try:
        port = parts.port or (5671 if tls else 5672)
    except ValueError as exc:
        raise ImproperlyConfigured(
            f"bad port in broker URL {redact_url(url)!r}: {exc}; use amqp://host:5672/vhost"
        ) from exc
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    vhost = urllib.parse.unquote(path) or "/"
    ssl_options = options.get("ssl")
    return AmqpTarget(
        host=parts.hostname or "localhost",
        port=port,
        vhost=vhost,
        user=urllib.parse.unquote(parts.username or "guest"),
        password=urllib.parse.unquote(parts.password or "guest"),
        tls=tls,
        ssl_options=dict(ssl_options) if isinstance(ssl_options, Mapping) else {},
        heartbeat=int(options.get("heartbeat", 60)),
        connect_timeout=float(options.get("connect_timeout", 4.0)),
        redacted=redact_url(url),
    )
