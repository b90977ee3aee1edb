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
    "rpc",
    "postgresql",
    "postgres",
    "db+postgresql",
    "db+postgres",
    "db+sqlite",
    "file",
)
#: Celery result backends whose support is not built yet: refused by name, not as unknown.
PLANNED_SCHEMES = {
    "amqp": "Celery 4's AMQP backend, removed in Celery 5: use rpc://",
    "db": "Celery's SQLAlchemy database backend; chard reads db+postgresql and db+sqlite",
}


def check_backend_url(url: str) -> str:
    """Return ``url``'s scheme if chard has a result backend for it (nothing is opened).

    Raises:
        ImproperlyConfigured: an unknown scheme, or one not supported yet (Celery's
            ``db+`` URLs of other databases); the message lists the supported ones.
    """
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme in SUPPORTED_SCHEMES:
        return scheme
    supported = ", ".join(f"{s}://" for s in SUPPORTED_SCHEMES)
    planned = PLANNED_SCHEMES.get(scheme.partition("+")[0])  # db+postgresql:// is "db"
    if planned is not None:
        raise ImproperlyConfigured(
            f"result backend {redact_url(url)!r} uses {scheme}:// ({planned}), which chard does "
            f"not support yet; use one of {supported} (e.g. 'redis://localhost:6379/1')"
        )
    raise ImproperlyConfigured(
        f"unknown result backend URL scheme {scheme or url!r} in {redact_url(url)!r}; "
        f"supported: {supported}"
    )


def open_backend(
    url: str, *, expires: float | None = None, options: Mapping[str, Any] | None = None
) -> ResultBackend:
    """Return a result backend for ``url``.

    Raises:
        ImproperlyConfigured: unknown scheme (the message lists the supported ones).
    """
    scheme = check_backend_url(url)
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
    if scheme == "rpc":
        try:
            from chard.backends.rpc import RPCResultBackend
        except ImportError as exc:
            raise ImproperlyConfigured(
                "result backend 'rpc://' needs the AMQP client; pip install 'chard[rabbitmq]'"
            ) from exc
        return RPCResultBackend(url, expires=expires, options=options)
    if scheme in ("postgresql", "postgres", "db+postgresql", "db+postgres"):
        try:
            from chard.backends.postgres import PostgresResultBackend
        except ImportError as exc:
            raise ImproperlyConfigured(
                f"result backend {redact_url(url)!r} needs psycopg; pip install 'chard[postgres]'"
            ) from exc
        return PostgresResultBackend(url, expires=expires, options=options)
    # A scheme in SUPPORTED_SCHEMES reaches here only if its branch above is missing.
    raise ImproperlyConfigured(f"result backend scheme {scheme!r} has no class in open_backend")


__all__ = ["ResultBackend", "check_backend_url", "open_backend"]
