"""Open a broker from its URL: one explicit scheme switch, each transport imported lazily."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from chard._utils.log import redact_url
from chard.brokers.base import Broker, Delivery, OutgoingMessage
from chard.exceptions import ImproperlyConfigured

SUPPORTED_SCHEMES = (
    "sqlite",
    "memory",
    "redis",
    "rediss",
    "unix",
    "amqp",
    "amqps",
    "pyamqp",
    "postgresql",
    "postgres",
)
#: Schemes Celery users have whose support is not built yet: refused by name, not as unknown.
PLANNED_SCHEMES = {
    "sqs": "Amazon SQS",
}


def check_broker_url(url: str) -> str:
    """Return ``url``'s scheme if chard has a broker for it (nothing is opened).

    Raises:
        ImproperlyConfigured: an unknown scheme, or one not supported yet (SQS); the
            message lists the supported ones.
    """
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme in SUPPORTED_SCHEMES:
        return scheme
    supported = ", ".join(f"{s}://" for s in SUPPORTED_SCHEMES)
    if scheme in PLANNED_SCHEMES:
        raise ImproperlyConfigured(
            f"broker {redact_url(url)!r} uses {scheme}:// ({PLANNED_SCHEMES[scheme]}), which chard "
            f"does not support yet; use one of {supported} (e.g. 'redis://localhost:6379/0')"
        )
    raise ImproperlyConfigured(
        f"unknown broker URL scheme {scheme or url!r} in {redact_url(url)!r}; "
        f"supported: {supported} (e.g. 'sqlite:///chard.sqlite3' or 'redis://localhost:6379/0')"
    )


def open_broker(url: str, options: Mapping[str, Any] | None = None) -> Broker:
    """Return a broker for ``url``.

    Raises:
        ImproperlyConfigured: unknown scheme (the message lists the supported ones),
            or the transport's extra is not installed.
    """
    scheme = check_broker_url(url)
    if scheme == "memory":
        from chard.brokers.memory import MemoryBroker

        return MemoryBroker(url, options)
    if scheme == "sqlite":
        from chard.brokers.sqlite import SQLiteBroker

        return SQLiteBroker(url, options)
    if scheme in ("redis", "rediss", "unix"):
        try:
            from chard.brokers.redis import RedisBroker
        except ImportError as exc:
            raise ImproperlyConfigured(
                f"broker {redact_url(url)!r} needs the redis client; pip install 'chard[redis]'"
            ) from exc
        return RedisBroker(url, options)
    if scheme in ("amqp", "amqps", "pyamqp"):
        try:
            from chard.brokers.amqp import AmqpBroker
        except ImportError as exc:
            raise ImproperlyConfigured(
                f"broker {redact_url(url)!r} needs the AMQP client; pip install 'chard[rabbitmq]'"
            ) from exc
        return AmqpBroker(url, options)
    if scheme in ("postgresql", "postgres"):
        try:
            from chard.brokers.postgres import PostgresBroker
        except ImportError as exc:
            raise ImproperlyConfigured(
                f"broker {redact_url(url)!r} needs psycopg; pip install 'chard[postgres]'"
            ) from exc
        return PostgresBroker(url, options)
    # A scheme in SUPPORTED_SCHEMES reaches here only if its branch above is missing.
    raise ImproperlyConfigured(f"broker scheme {scheme!r} has no transport in open_broker")


__all__ = ["Broker", "Delivery", "OutgoingMessage", "check_broker_url", "open_broker"]
