"""Parse chard's PostgreSQL URLs into a libpq connection string and a schema, without psycopg.

One syntax for the broker, the result backend and beat's store:
``postgresql://user:password@host:port/dbname`` (``postgres://`` and Celery's SQLAlchemy-style
``db+postgresql://`` are the same). libpq's own query parameters (``sslmode``,
``connect_timeout`` …) pass through; chard takes one of its own, ``schema`` (also a transport
option), which names the PostgreSQL schema that holds chard's tables (default ``public``).
Tests give each test a schema of its own this way.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from chard._utils.log import redact_url
from chard.exceptions import ImproperlyConfigured

#: URL schemes that name a PostgreSQL database (``db+`` is Celery's database-backend prefix).
SCHEMES = ("postgresql", "postgres", "db+postgresql", "db+postgres")
DEFAULT_SCHEMA = "public"
#: A schema name chard can put in SQL unquoted-safe: letters, digits, underscores.
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


@dataclass(frozen=True)
class PostgresTarget:
    """Where to connect and in which schema chard keeps its tables."""

    #: The URL for libpq (``postgresql://…``), chard's own options removed.
    conninfo: str
    #: Schema of chard's tables.
    schema: str
    #: The URL with its password replaced, for log lines and error messages.
    redacted: str

    @property
    def quoted_schema(self) -> str:
        """Return the schema as a quoted SQL identifier (validated: no quote inside)."""
        return f'"{self.schema}"'


def parse_postgres_url(url: str, options: Mapping[str, Any] | None = None) -> PostgresTarget:
    """Split ``url`` into a libpq URL and chard's schema.

    The ``schema`` query parameter wins over the ``schema`` option.

    Raises:
        ImproperlyConfigured: not a PostgreSQL URL, or a schema name chard cannot use.
    """
    scheme, sep, rest = url.partition("://")
    redacted = redact_url(url)
    if scheme.lower() not in SCHEMES or not sep:
        raise ImproperlyConfigured(
            f"not a PostgreSQL URL: {redacted!r}; use 'postgresql://user@host:5432/dbname'"
        )
    parts = urllib.parse.urlsplit("postgresql://" + rest)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    schema = str((options or {}).get("schema") or DEFAULT_SCHEMA)
    kept = []
    for name, value in query:
        if name == "schema":
            schema = value
        else:
            kept.append((name, value))
    if not _SCHEMA_NAME.fullmatch(schema):
        raise ImproperlyConfigured(
            f"PostgreSQL schema name {schema!r} in {redacted!r} is not usable; use letters, "
            "digits and underscores (at most 63), e.g. '?schema=chard'"
        )
    conninfo = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(kept)))
    return PostgresTarget(conninfo=conninfo, schema=schema, redacted=redact_url(conninfo))
