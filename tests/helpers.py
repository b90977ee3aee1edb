"""Test helpers shared by every suite: polling with a deadline and real-service checks."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import pytest

T = TypeVar("T")

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

#: One id per test session, for key prefixes and queue names on shared servers.
RUN_ID = uuid.uuid4().hex[:8]


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.02) -> T:
    """Poll ``predicate`` until it returns something truthy; fail the test at ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)


def child_exit_code(pid: int, timeout: float = 30.0) -> int | None:
    """Wait for forked child ``pid`` to exit; its exit code, or None (killed) at ``timeout``."""
    deadline = time.monotonic() + timeout
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)  # a poll of the child's exit, with a deadline
    if done[0] == 0:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        return None
    return os.waitstatus_to_exitcode(done[1])


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on (at the time of asking)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_service(name: str, host: str, port: int) -> None:
    """Skip the test when ``name`` is not listening, or fail under CI=true."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return
    except OSError as exc:
        message = f"{name} is not reachable at {host}:{port}: {exc}"
        if IN_CI:
            pytest.fail(message + " (CI=true: a missing service is a failure)")
        pytest.skip(message)


REDIS_HOST = os.environ.get("CHARD_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("CHARD_TEST_REDIS_PORT", "6379"))
#: Redis db for tests; each test also uses its own key prefix (see redis_url()).
REDIS_DB = int(os.environ.get("CHARD_TEST_REDIS_DB", "9"))


def redis_url(prefix: str | None = None) -> str:
    """Return a Redis URL for a test, checking the server first.

    The key prefix (``?global_keyprefix=``) isolates concurrent test runs on the shared server.
    """
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    prefix = prefix or f"chardtest-{RUN_ID}-{uuid.uuid4().hex[:6]}"
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}?global_keyprefix={prefix}"


RABBITMQ_HOST = os.environ.get("CHARD_TEST_RABBITMQ_HOST", "127.0.0.1")
RABBITMQ_PORT = int(os.environ.get("CHARD_TEST_RABBITMQ_PORT", "5672"))


def rabbitmq_vhost() -> str:
    """Create this test run's own RabbitMQ vhost (once per run); return its name.

    ``rabbitmqctl`` takes seconds per call, so one vhost serves the whole run and each
    test deletes the queues it made (:func:`delete_amqp_queues`).
    """
    global _rabbitmq_vhost
    require_service("RabbitMQ", RABBITMQ_HOST, RABBITMQ_PORT)
    if _rabbitmq_vhost is None:
        name = f"chardtest-{RUN_ID}"
        for args in (
            ["add_vhost", name],
            ["set_permissions", "-p", name, "guest", ".*", ".*", ".*"],
        ):
            subprocess.run(
                ["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60
            )
        _rabbitmq_vhost = name
        atexit.register(
            subprocess.run, ["rabbitmqctl", "-q", "delete_vhost", name], capture_output=True
        )
    return _rabbitmq_vhost


_rabbitmq_vhost: str | None = None


def amqp_url() -> str:
    """Return an amqp:// URL on this run's own vhost (see :func:`rabbitmq_vhost`)."""
    vhost = rabbitmq_vhost()
    return f"amqp://guest:guest@{RABBITMQ_HOST}:{RABBITMQ_PORT}/{vhost}"


@contextlib.contextmanager
def private_vhost() -> Iterator[str]:
    """Yield an amqp:// URL on a vhost of its own, deleted after (with its connections).

    For tests that run real workers, whose queues and connections are not the test's to
    list; each costs a few seconds of ``rabbitmqctl``.
    """
    require_service("RabbitMQ", RABBITMQ_HOST, RABBITMQ_PORT)
    name = f"chardtest-{RUN_ID}-{uuid.uuid4().hex[:6]}"
    for args in (["add_vhost", name], ["set_permissions", "-p", name, "guest", *[".*"] * 3]):
        subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)
    try:
        yield f"amqp://guest:guest@{RABBITMQ_HOST}:{RABBITMQ_PORT}/{name}"
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", name], capture_output=True, timeout=60)


def close_amqp_connections(url: str, pids: Callable[[int], bool]) -> list[str]:
    """Close, from RabbitMQ's side, the chard connections on ``url``'s vhost of the processes
    ``pids`` picks (by the ``chard <host>:<pid>`` name each connection gives itself); return
    the names of the connections closed."""

    def listing(*columns: str) -> str:
        return subprocess.run(
            ["rabbitmqctl", "-q", "list_connections", "-p", url.rsplit("/", 1)[1], *columns],
            check=True, capture_output=True, text=True, timeout=60,
        ).stdout  # fmt: skip

    # close_connection takes the connection's Erlang pid, which only the table form shows
    erlang_pids = dict(
        reversed(line.split("\t")[:2]) for line in listing("pid", "name").splitlines()[1:]
    )
    closed = []
    for connection in json.loads(
        listing("name", "client_properties", "--formatter", "json") or "[]"
    ):
        props = {p[0]: p[2] for p in connection["client_properties"]}
        name = str(props.get("connection_name", ""))
        erlang_pid = erlang_pids.get(connection["name"])
        if name.startswith("chard ") and erlang_pid and pids(int(name.rpartition(":")[2])):
            done = subprocess.run(  # fails for one that closed meanwhile: not counted
                ["rabbitmqctl", "-q", "close_connection", erlang_pid, "closed by a test"],
                capture_output=True, timeout=60,
            )  # fmt: skip
            if done.returncode == 0:
                closed.append(name)
    return closed


def delete_amqp_queues(url: str, names: Iterable[str]) -> None:
    """Delete queues a test declared (and the delay chain of each), on the vhost of ``url``."""
    import pika  # the test's own admin connection, not chard's

    from chard._amqp import delay

    with pika.BlockingConnection(pika.URLParameters(url)) as connection:
        channel = connection.channel()
        for name in names:
            if name.startswith("\0"):
                continue
            for queue in [name, *(delay.level_queue(lv, name) for lv in range(delay.LEVELS))]:
                channel.queue_delete(queue)
            channel.exchange_delete(name)


POSTGRES_HOST = os.environ.get("CHARD_TEST_POSTGRES_HOST", "127.0.0.1")
POSTGRES_PORT = int(os.environ.get("CHARD_TEST_POSTGRES_PORT", "5432"))
POSTGRES_DB = os.environ.get("CHARD_TEST_POSTGRES_DB", "test")
#: Every schema a test creates starts with this; the session drops what is left of them.
POSTGRES_SCHEMA_PREFIX = f"chardtest_{RUN_ID}_"


def postgres_url(schema: str | None = None) -> str:
    """Return a PostgreSQL URL for a test, checking the server first.

    The schema (``?schema=``) isolates the test's tables; drop it afterwards with
    :func:`drop_postgres_schema` (the session drops any left over).
    """
    require_service("PostgreSQL", POSTGRES_HOST, POSTGRES_PORT)
    schema = schema or POSTGRES_SCHEMA_PREFIX + uuid.uuid4().hex[:8]
    return f"postgresql://{POSTGRES_HOST}:{POSTGRES_PORT}/{POSTGRES_DB}?schema={schema}"


def drop_postgres_schema(url: str) -> None:
    """Drop the schema ``url`` names, with everything in it."""
    import psycopg

    schema = url.rpartition("?schema=")[2]
    conninfo = url.rpartition("?")[0]
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
