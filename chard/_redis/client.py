"""The redis-py client chard's Redis users share: one retry policy, one error translation.

The broker, the result backend and beat's schedule store used to build their clients
and map redis-py's exceptions each in their own words. They agree on both, so both live
here: a caller gets :func:`open_client` for the connection and a :class:`RedisErrors`
for the exceptions, and never imports ``redis`` itself.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from chard._redis.url import RedisTarget
from chard.exceptions import ChardError

#: A ``WATCH``ed key changed before ``EXEC`` (the transaction did nothing).
WatchError = redis.WatchError
#: ``EVALSHA`` of a script the server does not have (restarted, or ``SCRIPT FLUSH``).
NoScriptError = redis.exceptions.NoScriptError


def open_client(target: RedisTarget) -> redis.Redis:
    """Return a client for ``target`` that retries a lost connection a few times, quickly.

    Few, quick retries: a worker's loop retries by itself, and a caller that cannot reach
    Redis should hear so in about a second, not after redis-py's ten tries. Whoever must
    ride out a longer outage (the result backend's stores) retries around this.
    """
    retry = Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=3)
    return redis.Redis.from_url(target.client_url, retry=retry, **target.socket_options)


#: The oldest Redis server chard runs on (``BLMOVE`` and ``ZMSCORE`` came in 6.2).
MIN_REDIS = "6.2"


class RedisErrors:
    """Turn redis-py errors into chard's, naming the (redacted) URL and the fix.

    ``with errors():`` around any command: a lost or refused connection (and a timeout)
    becomes ``unreachable``, any other redis-py error ``failed``. Stateless, so one
    instance serves every thread.

    Args:
        what: What the caller is, for the message: ``"Redis broker"``.
        redacted: The URL with its password hidden (:attr:`RedisTarget.redacted`).
        unreachable: The exception for a connection that cannot be made or was lost.
        failed: The exception for any other error Redis or redis-py reports.
        url_name: Which setting holds the URL, for the hint: ``"broker URL"``.
    """

    def __init__(
        self,
        what: str,
        redacted: str,
        *,
        unreachable: type[ChardError],
        failed: type[ChardError],
        url_name: str,
    ) -> None:
        self.what = what
        self.redacted = redacted
        self.unreachable = unreachable
        self.failed = failed
        self.url_name = url_name

    def __call__(self) -> RedisErrors:
        """The context that translates errors (a class, not a generator: the hot paths use it)."""
        return self

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        if isinstance(exc, redis.RedisError):
            raise self.translate(exc) from exc

    #: What :meth:`translate` takes: ``except errors.caught as exc`` where a ``with``
    #: costs too much (three calls per command on a ``delay()``).
    caught: tuple[type[Exception], ...] = (redis.RedisError,)

    def translate(self, exc: BaseException) -> ChardError:
        """The chard error for redis-py's ``exc`` (one of :attr:`caught`), to raise from it."""
        if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
            return self.unreachable(
                f"cannot reach the {self.what} at {self.redacted!r}: {exc}; is redis-server "
                f"running, and are host, port, password and db in the {self.url_name} right?"
            )
        said = str(
            exc
        ).lower()  # (Redis: "unknown command"; from a script: "unknown redis command")
        if "unknown command" in said or "unknown redis command" in said:
            return self.failed(
                f"{self.what} at {self.redacted!r} failed: {exc}; chard needs Redis "
                f"{MIN_REDIS} or newer (it uses BLMOVE and ZMSCORE): upgrade redis-server"
            )
        return self.failed(f"{self.what} at {self.redacted!r} failed: {exc}")
