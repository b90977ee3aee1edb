"""Parse chard's Redis URLs into what redis-py takes, without importing redis.

The broker and the result backend share one URL syntax (``redis://[:password@]host:port/db``,
``rediss://…`` for TLS, ``unix:///path?db=N``), plus options redis-py does not know:
``global_keyprefix`` in the query string or in the transport options, as kombu and
Celery accept it. This module strips those, normalises Celery's spelling of the TLS
options, and leaves the client itself to :mod:`chard._redis.client`.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from chard._utils.log import redact_url
from chard.exceptions import ImproperlyConfigured

#: Query options chard consumes itself; redis-py would reject them as unknown arguments.
CHARD_QUERY_OPTIONS = frozenset({"global_keyprefix"})

#: Celery/kombu spell ``ssl_cert_reqs`` with the ``ssl`` module's constant names.
_CERT_REQS = {
    "cert_none": "none",
    "none": "none",
    "cert_optional": "optional",
    "optional": "optional",
    "cert_required": "required",
    "required": "required",
}


@dataclass(frozen=True)
class RedisTarget:
    """Where to connect and which key prefix to use."""

    #: URL to hand to ``redis.Redis.from_url``: chard's own options removed.
    client_url: str
    #: Prepended to every key (and channel) this client touches; "" for none.
    keyprefix: str
    #: The URL with its password replaced, for log lines and error messages.
    redacted: str

    @property
    def socket_options(self) -> dict[str, Any]:
        """Connection keywords for redis-py: TCP keepalive, which a unix socket refuses."""
        return {} if self.client_url.startswith("unix:") else {"socket_keepalive": True}


def parse_redis_url(
    url: str,
    options: Mapping[str, Any] | None = None,
    *,
    separate_prefix: bool = False,
) -> RedisTarget:
    """Split ``url`` into a redis-py URL and chard's key prefix.

    Args:
        url: ``redis://``, ``rediss://`` or ``unix://`` URL.
        options: transport options; ``global_keyprefix`` here wins over the query.
        separate_prefix: append ``_`` to a prefix that does not already end in one of
            ``:_-.``, as Celery's result backend does (kombu's broker does not).

    Raises:
        ImproperlyConfigured: the scheme is not a Redis one.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ImproperlyConfigured(
            f"not a Redis URL: {redact_url(url)!r}; "
            "use redis://host:port/db, rediss://host:port/db or unix:///path?db=N"
        )
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    prefix = ""
    kept: list[tuple[str, str]] = []
    for name, value in query:
        if name == "global_keyprefix":
            prefix = value
        elif name == "ssl_cert_reqs":
            kept.append((name, _CERT_REQS.get(value.lower(), value)))
        elif name not in CHARD_QUERY_OPTIONS:
            kept.append((name, value))
    if options and options.get("global_keyprefix"):
        prefix = str(options["global_keyprefix"])
    if separate_prefix and prefix and prefix[-1] not in ":_-.":
        prefix += "_"
    # Rebuilt by hand: urlunsplit() would turn "unix:///path" into "unix:/path".
    base = url.split("?", 1)[0].split("#", 1)[0]
    client_url = f"{base}?{urllib.parse.urlencode(kept)}" if kept else base
    return RedisTarget(client_url=client_url, keyprefix=prefix, redacted=redact_url(url))
