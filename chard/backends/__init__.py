"""Open a result backend from its URL: one explicit scheme switch, lazy imports."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from chard._utils.log import redact_url
from chard.backends.base import ResultBackend
from chard.exceptions import ImproperlyConfigured

SUPPORTED_SCHEMES = (
    "sqlite",
    "memory",
    "redis",
    "rediss",
    "unix",
    "postgresql",
    "postgres",
    "db+postgresql",
    "db+sqlite",
    "file",
)


def open_backend(
    url: str, *, expires: float | None = None, options: Mapping[str, Any] | None = None
) -> ResultBackend:
    """Return a result backend for ``url``.

    Raises:
        ImproperlyConfigured: unknown scheme (the message lists the supported ones).
    """
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme == "memory":
        from chard.backends.memory import MemoryResultBackend

        return MemoryResultBackend(url, expires=expires, options=options)
    if scheme in ("sqlite", "db+sqlite"):
        from chard.backends.sqlite import SQLiteResultBackend

        # Celery's database backend spells it db+sqlite:///path (SQLAlchemy's URL): same file.
        sqlite_url = url[len("db+") :] if scheme == "db+sqlite" else url
        return SQLiteResultBackend(sqlite_url, expires=expires, options=options)
    if scheme == "file":
        from chard.backends.filesystem import FilesystemResultBackend

        return FilesystemResultBackend(url, expires=expires, options=options)
    if scheme in ("redis", "rediss", "unix"):
        try:
            from chard.backends.redis import RedisResultBackend
        except ImportError as exc:
            raise ImproperlyConfigured(
                f"result backend {redact_url(url)!r} needs the redis client; "
                "pip install 'chard[redis]'"
            ) from exc
        return RedisResultBackend(url, expires=expires, options=options)
    if scheme in ("postgresql", "postgres", "db+postgresql", "db+postgres"):
        try:
            from chard.backends.postgres import PostgresResultBackend
        except ImportError as exc:
            raise ImproperlyConfigured(
                f"result backend {redact_url(url)!r} needs psycopg; pip install 'chard[postgres]'"
            ) from exc
        return PostgresResultBackend(url, expires=expires, options=options)
    if scheme.startswith("db+"):
        raise ImproperlyConfigured(
            f"result backend {redact_url(url)!r}: chard reads Celery's database URLs for "
            "PostgreSQL and SQLite only; use db+postgresql://... or db+sqlite:///path"
        )
    supported = ", ".join(f"{s}://" for s in SUPPORTED_SCHEMES)
    raise ImproperlyConfigured(
        f"unknown result backend URL scheme {scheme or url!r} in {redact_url(url)!r}; "
        f"supported: {supported}"
    )


__all__ = ["ResultBackend", "open_backend"]
