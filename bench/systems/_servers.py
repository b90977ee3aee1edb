"""Places of their own on shared servers: a Redis key prefix, a RabbitMQ vhost, a schema."""

from __future__ import annotations

import contextlib
import subprocess
from typing import Any

import redis


def delete_prefix(client: redis.Redis, prefix: str) -> None:
    """Delete every key under ``prefix`` (a system that shares its db)."""
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    for i in range(0, len(keys), 1000):
        client.delete(*keys[i : i + 1000])


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=120)


def make_vhost(server: str, name: str) -> str:
    """Create vhost ``name`` for guest; return the broker URL in it."""
    rabbitmqctl("add_vhost", name)
    rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    return f"{server.rstrip('/')}/{name}"


def amqp_purge(url: str, queue: str) -> None:
    import pika  # only for the RabbitMQ rows

    with pika.BlockingConnection(pika.URLParameters(url)) as connection:
        channel = connection.channel()
        with contextlib.suppress(pika.exceptions.ChannelClosedByBroker):
            channel.queue_purge(queue)


class Sql:
    """One autocommit PostgreSQL connection, kept between statements."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: Any = None

    def run(self, sql: str) -> Any:
        import psycopg  # only the PostgreSQL systems need the postgres extra

        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.url, autocommit=True)
        cursor = self._conn.execute(sql)
        return cursor.fetchone()[0] if cursor.description else None
