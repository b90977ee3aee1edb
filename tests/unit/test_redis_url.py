"""Redis URLs to redis-py connection settings: TLS options, unix sockets, key prefixes.

No server is contacted: redis-py builds its pool lazily, so the connection class and
keywords a broker or backend would use can be read straight off the client.
"""

from __future__ import annotations

import ssl
from typing import Any

import pytest
import redis

from chard._redis.url import parse_redis_url
from chard.backends.redis import RedisResultBackend
from chard.brokers.redis import RedisBroker
from chard.exceptions import ImproperlyConfigured

TLS_URL = (
    "rediss://:s3cret@cache.example:6380/2?ssl_cert_reqs=CERT_REQUIRED"
    "&ssl_ca_certs=/etc/ssl/ca.pem&ssl_certfile=/etc/ssl/client.pem"
    "&ssl_keyfile=/etc/ssl/client.key&ssl_check_hostname=true&global_keyprefix=app:"
)


def pool_of(client: redis.Redis) -> tuple[type[Any], dict[str, Any]]:
    pool = client.connection_pool
    return pool.connection_class, pool.connection_kwargs


@pytest.mark.parametrize(
    ("celery_value", "redis_py_value", "ssl_constant"),
    [
        ("CERT_REQUIRED", "required", ssl.CERT_REQUIRED),
        ("CERT_OPTIONAL", "optional", ssl.CERT_OPTIONAL),
        ("CERT_NONE", "none", ssl.CERT_NONE),
        ("required", "required", ssl.CERT_REQUIRED),
        ("none", "none", ssl.CERT_NONE),
    ],
)
def test_celerys_ssl_cert_reqs_spellings_reach_redis_py(
    celery_value: str, redis_py_value: str, ssl_constant: ssl.VerifyMode
) -> None:
    target = parse_redis_url(f"rediss://h:6380/0?ssl_cert_reqs={celery_value}")
    connection_class, kwargs = pool_of(redis.Redis.from_url(target.client_url))

    assert connection_class is redis.connection.SSLConnection
    assert kwargs["ssl_cert_reqs"] == redis_py_value
    connection = connection_class(**kwargs)  # built, not connected
    assert connection.cert_reqs == ssl_constant


def test_a_full_tls_url_becomes_redis_py_keywords_for_broker_and_backend() -> None:
    expected = {
        "host": "cache.example",
        "port": 6380,
        "db": 2,
        "password": "s3cret",
        "ssl_cert_reqs": "required",
        "ssl_ca_certs": "/etc/ssl/ca.pem",
        "ssl_certfile": "/etc/ssl/client.pem",
        "ssl_keyfile": "/etc/ssl/client.key",
        "ssl_check_hostname": True,
        "socket_keepalive": True,
    }
    broker = RedisBroker(TLS_URL)
    backend = RedisResultBackend(TLS_URL)
    try:
        for client in (broker._client, backend._client):
            connection_class, kwargs = pool_of(client)
            assert connection_class is redis.connection.SSLConnection
            assert {k: kwargs.get(k) for k in expected} == expected
            assert "global_keyprefix" not in kwargs  # chard's own option, not redis-py's
        assert broker._prefix == "app:"
        assert backend._prefix == "app:"
    finally:
        broker.close()
        backend.close()


def test_tls_url_is_redacted_in_what_chard_prints() -> None:
    target = parse_redis_url(TLS_URL)

    assert "s3cret" not in target.redacted
    assert target.redacted.startswith("rediss://:**@cache.example:6380/2")
    assert "global_keyprefix" not in target.client_url


def test_unix_socket_url_uses_the_socket_connection_without_tcp_options() -> None:
    url = "unix:///run/redis/redis.sock?db=3&global_keyprefix=p"
    broker = RedisBroker(url)
    try:
        connection_class, kwargs = pool_of(broker._client)
    finally:
        broker.close()

    assert connection_class is redis.connection.UnixDomainSocketConnection
    assert kwargs["path"] == "/run/redis/redis.sock"
    assert kwargs["db"] == 3
    # TCP keepalive is not an option of a unix socket connection: redis-py would refuse it
    assert "socket_keepalive" not in kwargs
    connection_class(**kwargs)  # accepted as built, not connected
    assert broker._prefix == "p"


def test_a_non_redis_scheme_is_refused_with_the_accepted_forms() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"use redis://host:port/db, rediss://"):
        parse_redis_url("amqp://guest:pw@h//")
